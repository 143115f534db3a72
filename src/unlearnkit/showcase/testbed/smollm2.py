"""The SmolLM2 testbed: SmolLM2-135M fine-tuned until it has memorised one 32-sequence TDEC forget set."""

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
from unlearnkit.showcase.testbed.data import FORGET_SIZE, TESTBED_VERSION


@dataclass(frozen=True)
class SmolSettings:
    """SmolLM2-135M fine-tuned (all weights) on one 32-sequence TDEC forget set until it is memorised."""

    forget_set: int = 0  # jang lm_extraction_32_{forget_set}
    seq_len: int = 200
    lr: float = 1e-4
    batch_size: int = 8
    max_epochs: int = 20
    target_ma: float = 0.9
    seed: int = 0
    heldout_tdec: int = 32

    @property
    def size(self) -> str:
        return "smollm2"

    def key(self) -> str:
        text = json.dumps({"version": TESTBED_VERSION, "model": "smollm2", **asdict(self)}, sort_keys=True)
        return f"smollm2-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


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
        point_latest(directory, "smollm2")
        return directory
    started = time.perf_counter()
    data_path = resolve_data_dir(data_dir)
    with progress.status("Loading SmolLM2-135M", announce=not quiet):
        loaded = load_model("smollm2")
    model, tokenizer = loaded.model, loaded.tokenizer
    forget = load_blocks(SourceConfig(source="jang", n=FORGET_SIZE, set=settings.forget_set), tokenizer, data_path,
                         seq_len=settings.seq_len)
    heldout = load_blocks(SourceConfig(source="tdec", split="val", n=settings.heldout_tdec, seed=0), tokenizer,
                          data_path, seq_len=settings.seq_len)
    # EL10 of text a model has not memorised costs as much as the reference definition (every prefix branches),
    # so MA only, except for the memorised set after.
    before = {"forget": score_memorization(model, forget, el=False),
              "heldout_tdec_val": score_memorization(model, heldout, el=False)}
    ticks = cast(Generator[int, None, None], progress.track(
        range(settings.max_epochs), total=settings.max_epochs, description="memorising jang 32 on SmolLM2",
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
        "size": "smollm2", "key": directory.name, "settings": asdict(settings), "seq_len": settings.seq_len,
        "forget_source": {"source": "jang", "n": FORGET_SIZE, "set": settings.forget_set},
        "forget_rows": [int(i) for i in forget.ids], "retokenized": forget.retokenized,
        "training": {"epochs": result.epochs, "reached_target": result.reached_target, "history": result.history},
        "measured": {"before": before, "after": after},
        "seconds": {"train": round(train_s, 1), "total": round(time.perf_counter() - started, 1)},
        "threads": torch.get_num_threads(), "torch": torch.__version__, "data_dir": str(data_path),
    }
    save_model_to_cache(directory, model, tokenizer, "manifest.json", manifest)
    point_latest(directory, "smollm2")
    if not quiet:
        progress.console.print(f"✓ SmolLM2 memorised jang 32_{settings.forget_set}: MA {after['forget']['ma']:.3f} "
                               f"(held-out {after['heldout_tdec_val']['ma']:.3f}); cached in {directory}")
    return directory
