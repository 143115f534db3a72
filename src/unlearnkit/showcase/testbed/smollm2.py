"""The SmolLM2 testbeds: SmolLM2-135M fine-tuned until it has memorised 32-sequence TDEC forget sets.

``smollm2`` memorises Jang et al.'s lm_extraction_32_0 in 200-token rows (configs/smollm2/*.yaml);
``smollm2-sets`` memorises lm_extraction_32_{0,1,2} together in 100-token rows, so that a sweep can unlearn
each of three forget sets from the same model (configs/smollm2/sweeps/) in the time this machine has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch

from unlearnkit.config import SourceConfig
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.sources import load_blocks
from unlearnkit.modeling import load_model
from unlearnkit.progress import Progress
from unlearnkit.showcase.cache import cache_root, save_model_to_cache
from unlearnkit.showcase.memorize import memorize
from unlearnkit.showcase.testbed.build import point_latest, score_memorization
from unlearnkit.showcase.testbed.data import FORGET_SIZE, TESTBED_VERSION, concat_blocks


@dataclass(frozen=True)
class SmolSettings:
    """SmolLM2-135M fine-tuned (all weights) on one 32-sequence TDEC forget set until it is memorised."""

    forget_sets: tuple[int, ...] = (0,)  # jang lm_extraction_32_{k} for each k, memorised together
    seq_len: int = 200
    lr: float = 1e-4
    batch_size: int = 8
    max_epochs: int = 20
    target_ma: float = 0.9
    seed: int = 0
    heldout_tdec: int = 32

    name: str = "smollm2"

    @property
    def size(self) -> str:
        return self.name

    def key(self) -> str:
        settings = asdict(self)
        settings.pop("name")
        if settings["forget_sets"] == (0,):  # the key the one-set testbed had before there were several
            settings.pop("forget_sets")
            settings["forget_set"] = 0
        text = json.dumps({"version": TESTBED_VERSION, "model": "smollm2", **settings}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


SMOLLM2_SIZES = {
    "smollm2": SmolSettings(),
    "smollm2-sets": SmolSettings(name="smollm2-sets", forget_sets=(0, 1, 2), seq_len=100, max_epochs=30),
}


def smollm2_dir(settings: SmolSettings | None = None) -> Path:
    return cache_root() / "testbed" / (settings or SmolSettings()).key()


def build_smollm2(*, data_dir: str | Path | None = None, quiet: bool = False, progress: Progress | None = None,
                  settings: SmolSettings | None = None, force: bool = False) -> Path:
    """SmolLM2-135M that has memorised Jang et al.'s ``lm_extraction_32_{k}`` (decoded from TDEC's GPT-2 ids and
    re-tokenised by the data layer), cached like the testbed: ``testbed/smollm2-<hash>/{model/,manifest.json}``.
    """
    settings = settings or SmolSettings()
    progress = progress or Progress(quiet=quiet)
    directory = smollm2_dir(settings)
    if not force and (directory / "manifest.json").is_file() and (directory / "model" / "config.json").is_file():
        point_latest(directory, settings.name)
        return directory
    started = time.perf_counter()
    data_path = resolve_data_dir(data_dir)
    with progress.status("Loading SmolLM2-135M", announce=not quiet):
        loaded = load_model("smollm2")
    model, tokenizer = loaded.model, loaded.tokenizer
    sets = [load_blocks(SourceConfig(source="jang", n=FORGET_SIZE, set=k), tokenizer, data_path,
                        seq_len=settings.seq_len) for k in settings.forget_sets]
    forget = concat_blocks(sets, "+".join(f"jang:32_{k}" for k in settings.forget_sets)) if len(sets) > 1 else sets[0]
    heldout = load_blocks(SourceConfig(source="tdec", split="val", n=settings.heldout_tdec, seed=0), tokenizer,
                          data_path, seq_len=settings.seq_len)
    # EL10 of text a model has not memorised costs as much as the reference definition (every prefix branches),
    # so MA only, except for the memorised set after.
    before = {"forget": score_memorization(model, forget, el=False),
              "heldout_tdec_val": score_memorization(model, heldout, el=False)}
    ticks = cast(Generator[int, None, None], progress.track(
        range(settings.max_epochs), total=settings.max_epochs, description=f"memorising {forget.name} on SmolLM2",
        unit="epochs"))

    def on_epoch(epoch: int, ma: float) -> None:
        next(ticks, None)
        if not quiet:
            progress.console.print(f"  epoch {epoch}: forget MA {ma:.3f} (target {settings.target_ma})")

    with contextlib.closing(ticks):
        result = memorize(model, forget, target_ma=settings.target_ma, max_epochs=settings.max_epochs,
                          lr=settings.lr, batch_size=settings.batch_size, seed=settings.seed, on_epoch=on_epoch)
    train_s = time.perf_counter() - started
    model.eval()
    after = {"forget": score_memorization(model, forget),
             "heldout_tdec_val": score_memorization(model, heldout, el=False)}
    manifest = {
        "size": settings.name, "key": directory.name, "settings": asdict(settings), "seq_len": settings.seq_len,
        "forget_sources": [{"source": "jang", "n": FORGET_SIZE, "set": k} for k in settings.forget_sets],
        "forget_rows": {f"32_{k}": [int(i) for i in part.ids] for k, part in zip(settings.forget_sets, sets,
                                                                                    strict=True)},
        "retokenized": any(part.retokenized for part in sets),
        "training": {"epochs": result.epochs, "reached_target": result.reached_target, "history": result.history},
        "measured": {"before": before, "after": after},
        "seconds": {"train": round(train_s, 1), "total": round(time.perf_counter() - started, 1)},
        "threads": torch.get_num_threads(), "torch": torch.__version__, "data_dir": str(data_path),
    }
    save_model_to_cache(directory, model, tokenizer, "manifest.json", manifest)
    point_latest(directory, settings.name)
    if not quiet:
        progress.console.print(f"✓ SmolLM2 memorised {forget.name}: MA {after['forget']['ma']:.3f} "
                               f"(held-out {after['heldout_tdec_val']['ma']:.3f}); cached in {directory}")
    return directory
