"""Building a testbed: train it (or find it in the cache), measure it, and write its manifest.

A build is cached under ``$UNLEARNKIT_CACHE/testbed/<size>-<settings hash>/`` (default cache root
``~/.cache/unlearnkit``) with ``model/`` and ``manifest.json``; ``testbed/<size>`` is a link to the
latest build, so configs can name ``~/.cache/unlearnkit/testbed/small/model``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from unlearnkit.config import SourceConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.sources import load_blocks, load_gpt2_tokenizer
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import atomic_symlink
from unlearnkit.metrics.perplexity import perplexity
from unlearnkit.progress import Progress
from unlearnkit.showcase.cache import cache_root, save_model_to_cache
from unlearnkit.showcase.testbed.data import (
    FORGET_SIZE,
    POOL_SIZE,
    TestbedSettings,
    load_testbed_data,
    settings_for,
)
from unlearnkit.showcase.testbed.train import kept_tokens, new_model, train_testbed


def testbed_dir(size: str = "small", settings: TestbedSettings | None = None) -> Path:
    """Where the testbed of ``size`` is (or will be) cached."""
    settings = settings or settings_for(size)
    return cache_root() / "testbed" / settings.key()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    return dict(json.loads((Path(directory) / "manifest.json").read_text(encoding="utf-8")))


def heldout_perplexity(model: Any, sets: dict[str, TokenBlocks]) -> dict[str, float]:
    """Perplexity of each held-out set and of all of them together (token-weighted)."""
    result = {name: perplexity(model, blocks, batch_size=16) for name, blocks in sets.items()}
    weights = {name: blocks.num_tokens - len(blocks) for name, blocks in sets.items()}
    total = sum(weights.values())
    result["combined"] = math.exp(sum(math.log(result[n]) * w for n, w in weights.items()) / total)
    return result


def score_memorization(model: Any, blocks: TokenBlocks, el_n: int = 10, el: bool = True) -> dict[str, float]:
    """Mean MA and (unless ``el=False``) EL_n of ``blocks``, rounded for a manifest."""
    from unlearnkit.metrics.memorization import extraction_likelihood, memorization_accuracy

    ma = memorization_accuracy(model, blocks.input_ids, blocks.attention_mask)
    scores = {"ma": round(float(ma.mean()), 4)}
    if el:
        values = extraction_likelihood(model, blocks.input_ids, n=el_n, attention_mask=blocks.attention_mask)
        scores[f"el{el_n}"] = round(float(values.mean()), 4)
    return scores


def build_testbed(size: str = "small", *, data_dir: str | Path | None = None, quiet: bool = False,
                  progress: Progress | None = None, settings: TestbedSettings | None = None,
                  force: bool = False) -> Path:
    """The cached testbed directory of ``size`` (``model/`` + ``manifest.json``), trained first if missing."""
    settings = settings or settings_for(size)
    progress = progress or Progress(quiet=quiet)
    directory = testbed_dir(settings.size, settings)
    if not force and (directory / "manifest.json").is_file() and (directory / "model" / "config.json").is_file():
        point_latest(directory, settings.size)
        return directory
    started = time.perf_counter()
    data_path = resolve_data_dir(data_dir)
    tokenizer = load_gpt2_tokenizer(data_path)
    with progress.status("Loading the testbed text (TDEC, WikiText, Pile)", announce=not quiet):
        data = load_testbed_data(settings, tokenizer, data_path)
    model = new_model(settings)
    load_s = time.perf_counter() - started
    trained = train_testbed(model, data, settings, progress)
    train_s = time.perf_counter() - started - load_s
    model.eval()
    t0 = time.perf_counter()
    with progress.status("Measuring memorisation and perplexity", announce=not quiet):
        pool_jang32 = load_blocks(SourceConfig(source="jang", n=FORGET_SIZE, set=settings.pool_set), tokenizer,
                                  data_path, seq_len=settings.seq_len)
        # EL10 is scored on the first forget set rather than the whole pool: it is the dearest score, and the 32
        # rows are the ones the configs unlearn.
        measured = {
            "pool": score_memorization(model, data.pool, el=False),
            "forget_set_0": score_memorization(model, pool_jang32),
            "heldout_tdec_val": score_memorization(model, data.heldout_tdec),
            "perplexity": {**heldout_perplexity(model, data.heldout_text),
                           "retain": perplexity(model, data.retain_eval, batch_size=16)},
        }
    manifest = {
        "size": settings.size, "key": directory.name, "settings": asdict(settings),
        "seq_len": settings.seq_len, "lora_rank": settings.lora_rank,
        "parameters": sum(p.numel() for p in model.parameters()),
        "kept_tokens": len(kept_tokens(data, settings)),
        "pool_source": {"source": "jang", "n": POOL_SIZE, "set": settings.pool_set},
        "pool_rows": [int(i) for i in data.pool.ids],
        "jang32_rows": [int(i) for i in pool_jang32.ids],
        "heldout_tdec_val_rows": [int(i) for i in data.heldout_tdec.ids],
        "training": {"epochs": trained.epochs, "steps": trained.steps, "tokens": trained.tokens,
                     "reached_target": trained.reached_target, "history": trained.history,
                     "background_blocks": len(data.background)},
        "measured": measured,
        "seconds": {"load": round(load_s, 1), "train": round(train_s, 1),
                    "measure": round(time.perf_counter() - t0, 1), "total": round(time.perf_counter() - started, 1)},
        "threads": torch.get_num_threads(), "machine": platform.machine(), "torch": torch.__version__,
        "data_dir": str(data_path),
    }
    if not set(manifest["jang32_rows"]) <= set(manifest["pool_rows"]):  # pragma: no cover - data invariant
        raise UnlearnkitError("lm_extraction_32_k is not inside lm_extraction_128_k; the data files are not Jang's.")
    save_model_to_cache(directory, model, tokenizer, "manifest.json", manifest)
    point_latest(directory, settings.size)
    if not quiet:
        mark = "[green]✓[/green]" if trained.reached_target else "[yellow]![/yellow]"
        progress.console.print(
            f"{mark} {settings.size} testbed: pool MA {measured['pool']['ma']:.3f}, forget set 0 "
            f"EL10 {measured['forget_set_0']['el10']:.3f}; held-out TDEC MA "
            f"{measured['heldout_tdec_val']['ma']:.3f}, EL10 {measured['heldout_tdec_val']['el10']:.3f}; "
            f"{trained.epochs} epochs, "
            f"{manifest['seconds']['total']:.0f}s; cached in {directory}")
    return directory


def point_latest(directory: Path, size: str) -> None:
    """Make ``testbed/<size>`` a link to ``directory`` (atomically), so configs can name a fixed path."""
    link = directory.parent / size
    if link.is_symlink() and os.readlink(link) == directory.name:
        return
    if link.exists() and not link.is_symlink():
        return  # a real directory of that name: leave it alone
    with contextlib.suppress(OSError):  # no symlinks here (some filesystems): --print-path still works
        atomic_symlink(link, directory.name)
