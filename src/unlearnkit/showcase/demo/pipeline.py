"""The demo's pipeline: customers ask to be forgotten, a real LM forgets them, and we prove it.

1. **Memorise.** SmolLM2-135M-Instruct is fine-tuned on synthetic customer records until it has
   memorised them (MA ≥ 0.9). The result is cached under ``~/.cache/unlearnkit/demo/<key>``
   (``$UNLEARNKIT_CACHE`` overrides the root), so later runs skip this step.
2. **Unlearn.** Some customers ask for deletion: their records are unlearned with IHL + FLoRA
   (:func:`unlearnkit.loop.run_unlearning`), keeping the other customers' records (the retain set);
   never-seen customers from the same generator give the forgetting thresholds.
3. **Report.** For the forgotten and the kept customers: MA, EL10 and a leak test (does the model
   still complete their e-mail and phone number?), plus perplexity on general text and the time
   taken (:mod:`unlearnkit.showcase.demo.report`). ``compare=True`` adds gradient ascent (full
   fine-tuning, the paper's baseline) side by side.

``DemoSettings(tiny=True)`` runs the same pipeline on a tiny randomly initialised GPT-Neo with a
locally trained tokenizer (seconds; used by the tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console

from unlearnkit.config import RunConfig, build_config
from unlearnkit.config.plugins import load_plugin
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.evaluation import evaluate_memorization
from unlearnkit.io import atomic_write_text, claimed
from unlearnkit.metrics.perplexity import general_text, general_text_blocks, perplexity
from unlearnkit.modeling import LoadedModel, load_model, train_byte_bpe_tokenizer
from unlearnkit.outputs import check_output_path
from unlearnkit.progress import Progress
from unlearnkit.runner import unlearn
from unlearnkit.showcase.cache import cache_root, save_model_to_cache
from unlearnkit.showcase.demo.report import DemoResult, Measured, MethodRun, write_demo_outputs
from unlearnkit.showcase.demo.settings import INFO_FILE, TARGET_MA, TINY_SHAPE, DemoSettings
from unlearnkit.showcase.leaks import leak_test
from unlearnkit.showcase.memorize import memorize

# --------------------------------------------------------------------------------- step 1: memorize


def _tiny_base(settings: DemoSettings, records: list[str]) -> LoadedModel:
    """A randomly initialised tiny GPT-Neo and a byte-level BPE tokenizer trained here on the spot."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    text = general_text()
    tokenizer = train_byte_bpe_tokenizer(records + [text[i:i + 4000] for i in range(0, len(text), 4000)],
                                TINY_SHAPE["vocab"])
    torch.manual_seed(settings.seed)
    layers, hidden = TINY_SHAPE["layers"], TINY_SHAPE["hidden"]
    model = GPTNeoForCausalLM(GPTNeoConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_layers=layers, num_heads=4,
        attention_types=[[["global", "local"], layers // 2]], intermediate_size=4 * hidden,
        max_position_embeddings=256, window_size=256, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    ))
    return LoadedModel(model, tokenizer, "tiny-gpt-neo")


def prepare_memorized_model(settings: DemoSettings, progress: Progress) -> tuple[Path, dict[str, Any]]:
    """The cached model that has memorised every customer's record, trained first if missing."""
    directory = cache_root() / "demo" / settings.memorize_key()
    info_path = directory / INFO_FILE
    if (directory / "model" / "config.json").exists() and info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        progress.console.print(f"[green]✓[/green] Step 1: memorised model from the cache ({directory}; "
                               f"MA {info['ma']:.3f})")
        return directory, {**info, "cached": True}
    preset = settings.preset
    started = time.perf_counter()
    texts = [r.text() for r in settings.records()[: settings.customers]]
    with progress.status("Loading the base model", announce=False):
        base = _tiny_base(settings, [r.text() for r in settings.records()]) if settings.tiny else \
            load_model("smollm2")
    tokenizer, model = base.tokenizer, base.model
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    blocks = TokenBlocks.from_lists(rows, "customers", pad_id=tokenizer.pad_token_id)
    ticks = cast(Generator[int, None, None], progress.track(
        range(preset.memorize_epochs + 1), total=preset.memorize_epochs,
        description=f"Step 1: memorising {len(texts)} customer records", unit="epochs"))
    next(ticks)

    def on_epoch(epoch: int, ma: float) -> None:
        for _ in range(preset.memorize_check_every):
            next(ticks, None)
        if not progress.quiet:
            progress.console.print(f"  memorising: epoch {epoch}, MA {ma:.3f} (target {TARGET_MA})")

    try:
        result = memorize(model, blocks, target_ma=TARGET_MA, max_epochs=preset.memorize_epochs,
                          lr=preset.memorize_lr, batch_size=preset.memorize_batch,
                          check_every=preset.memorize_check_every, seed=settings.seed, on_epoch=on_epoch)
    finally:
        ticks.close()
    seconds = time.perf_counter() - started
    info = {"ma": result.ma, "epochs": result.epochs, "reached_target": result.reached_target,
            "history": result.history, "seconds": round(seconds, 1), "tokens_per_record":
            round(blocks.num_tokens / len(blocks), 1), "key": directory.name}
    mark = "[green]✓[/green]" if result.reached_target else "[yellow]![/yellow]"
    progress.console.print(f"{mark} Step 1: {len(texts)} records memorised: MA {result.ma:.3f} after "
                           f"{result.epochs} epochs ({seconds:.0f}s); cached in {directory}")
    with progress.status("Saving the memorised model to the cache", announce=False):
        save_model_to_cache(directory, model, tokenizer, INFO_FILE, info)
    return directory, {**info, "cached": False}


# --------------------------------------------------------------------------------- step 2: unlearn


def write_splits(directory: Path, settings: DemoSettings) -> Path:
    """forget / retain / holdout JSONL files (one record per line) for the run's file sources."""
    records = settings.records()
    split = {"forget": records[: settings.forget], "retain": records[settings.forget: settings.customers],
             "holdout": records[settings.customers:]}
    where = directory / f"split-forget{settings.forget}-holdout{settings.holdout}"
    for name, rows in split.items():
        atomic_write_text(where / f"{name}.jsonl", "".join(json.dumps({"text": r.text()}) + "\n" for r in rows))
    return where


def demo_config(model_dir: Path, splits: Path, settings: DemoSettings, output_dir: Path, method: str = "ihl",
                adapter: str = "flora", thresholds: tuple[float, float] | None = None) -> RunConfig:
    """The run config, built in code: records as per-document file sources, IHL + FLoRA by default."""
    preset = settings.preset

    def records(name: str) -> dict[str, Any]:
        return {"source": "file", "path": str(splits / f"{name}.jsonl"), "per_document": True}

    rank = settings.rank or preset.rank
    full_fine_tuning = not load_plugin("adapter", adapter).has_adapter
    lr = (settings.ga_lr or preset.ga_lr) if full_fine_tuning else (settings.lr or preset.lr)
    evaluation: dict[str, Any] = {"el_n": 10, "batch_size": preset.eval_batch_size,
                                  "retain_sequences": min(settings.kept_scored, settings.customers - settings.forget)}
    if thresholds is not None:  # reuse the first run's thresholds: no need to score the never-seen again
        evaluation.update(ma_threshold=thresholds[0], el_threshold=thresholds[1])
    return build_config({
        "seed": settings.seed,
        "model": {"name": str(model_dir)},
        "data": {"seq_len": 128, "forget": records("forget"), "retain": records("retain"),
                 "validation": None if thresholds is not None else records("holdout")},
        "method": {"name": method},
        "adapter": {"name": adapter, "rank": rank, "alpha": 2 * rank, "modules": ["q", "v", "ffn"],
                    # the kept customers are few: the retain Fisher sees all of them
                    "flora": {"svd": preset.svd, "retain_sequences": None}},
        "train": {"lr": lr, "epochs": settings.epochs or preset.epochs, "batch_size": preset.batch_size,
                  "retain_batch_size": preset.retain_batch_size},
        "eval": evaluation,
        # the demo starts afresh each time (its memorised model is what it caches)
        "output": {"dir": str(output_dir), "overwrite": True, "checkpoint": False},
    })


# --------------------------------------------------------------------------------- step 3: measure


def measure_leaks_and_perplexity(model: Any, tokenizer: Any, settings: DemoSettings, progress: Progress,
                                 label: str) -> Measured:
    """Leak test on the forgotten and the scored kept customers, and perplexity on general text."""
    started = time.perf_counter()
    records = settings.records()
    kept = records[settings.forget: settings.customers][: settings.kept_scored]
    preset = settings.preset
    with progress.status(f"{label}: leak test ({10 * settings.forget + 4 * len(kept)} prompts) and perplexity",
                         announce=False):
        forget_leaks = leak_test(model, tokenizer, records[: settings.forget], batch_size=preset.eval_batch_size)
        reworded = leak_test(model, tokenizer, records[: settings.forget], batch_size=preset.eval_batch_size,
                             reworded=True)
        kept_leaks = leak_test(model, tokenizer, kept, batch_size=preset.eval_batch_size)
        blocks = general_text_blocks(tokenizer, tokens=preset.ppl_tokens, seq_len=preset.ppl_seq_len)
        ppl = perplexity(model, blocks)
    return Measured(forget_leaks, kept_leaks, ppl, time.perf_counter() - started, reworded)


def run_demo(output_dir: Path, settings: DemoSettings | None = None, *, compare: bool = False,
             quiet: bool = False, console: Console | None = None) -> DemoResult:
    """Steps 1-3 (see the module docstring); writes demo.md, demo.png and demo.json next to the run's report."""
    settings = settings or DemoSettings()
    settings.check()
    output_dir = Path(output_dir).expanduser()
    # refused before the (minutes of) memorising: a file, a folder of the user's, an uncreatable path
    check_output_path(output_dir, [cache_root().resolve()], overwrite=True, option="--output")
    threads = torch.get_num_threads()
    if settings.tiny:
        # A tiny model's matrices are too small to share between threads: one thread is several times
        # faster, above all on a busy machine.
        torch.set_num_threads(1)
    try:
        with claimed(output_dir):  # a second demo into the same directory is refused while this one writes it
            return _run_demo(output_dir, settings, compare, quiet, console)
    finally:
        torch.set_num_threads(threads)


def _run_demo(output_dir: Path, settings: DemoSettings, compare: bool, quiet: bool,
              console: Console | None) -> DemoResult:
    console = console or Console(emoji=False, quiet=quiet)
    progress = Progress(console=console, quiet=quiet)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    directory, memorized = prepare_memorized_model(settings, progress)
    timings["memorise_s"] = 0.0 if memorized["cached"] else float(memorized["seconds"])  # a demo.json key
    t0 = time.perf_counter()
    with progress.status("Loading the memorised model", announce=False):
        loaded = load_model(str(directory / "model"))
    splits = write_splits(directory, settings)
    timings["load_s"] = time.perf_counter() - t0
    before = measure_leaks_and_perplexity(loaded.model, loaded.tokenizer, settings, progress, "memorised model")
    timings["measure_before_s"] = before.seconds

    console.print(f"Step 2: {settings.forget} of {settings.customers} customers ask to be forgotten; "
                  f"unlearning their records with IHL + FLoRA")
    runs = [_unlearn(loaded, directory, splits, settings, output_dir, progress, "IHL + FLoRA", "ihl", "flora")]
    if compare:
        th = runs[0].result.thresholds
        console.print("Compare: the same request with gradient ascent (GA, full fine-tuning, Jang et al.)")
        runs.append(_unlearn(loaded, directory, splits, settings, output_dir / "ga", progress, "GA (full)", "ga",
                             "none", thresholds=(th.ma, th.el)))
    for run in runs:
        timings[f"unlearn_{run.result.config.method.name}_s"] = run.seconds
    timings["total_s"] = time.perf_counter() - started
    result = DemoResult(settings, output_dir, memorized, before, runs, timings)
    with progress.status("Writing the demo report", announce=False):
        write_demo_outputs(result)
    return result


def _kept_blocks(tokenizer: Any, settings: DemoSettings) -> TokenBlocks:
    kept = settings.records()[settings.forget: settings.customers][: settings.kept_scored]
    rows = tokenizer([r.text() for r in kept], add_special_tokens=False)["input_ids"]
    return TokenBlocks.from_lists(rows, "kept customers", pad_id=tokenizer.pad_token_id or 0)


def _unlearn(loaded: LoadedModel, directory: Path, splits: Path, settings: DemoSettings, output_dir: Path,
             progress: Progress, label: str, method: str, adapter: str,
             thresholds: tuple[float, float] | None = None) -> MethodRun:
    t0 = time.perf_counter()
    config = demo_config(directory / "model", splits, settings, output_dir, method, adapter, thresholds)
    # the demo holds its directory's claim: its runs write there (the comparison in a folder of it)
    finished = unlearn(config, loaded=loaded, console=progress.console, quiet=progress.quiet, claim=False)
    assert finished is not None  # returned whenever skip_finished is off
    result = finished.result
    seconds = time.perf_counter() - t0
    model = result.plain_model()
    measured = measure_leaks_and_perplexity(model, result.tokenizer, settings, progress, f"after {label}")
    if "retain" not in result.after:
        # Methods that never read the retain set (GA) do not load it, so the run did not score the kept
        # customers; score them here, on the same records the first run scored.
        kept = _kept_blocks(result.tokenizer, settings)
        result.after["retain"] = evaluate_memorization(model, kept, config.eval, progress, f"{label} · kept")
    return MethodRun(label, result, measured, seconds)
