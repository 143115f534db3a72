"""The embedded default demo: customers ask to be forgotten, a real LM forgets them, and we prove it.

1. **Memorise.** SmolLM2-135M-Instruct is fine-tuned on synthetic customer records until it has
   memorised them (MA ≥ 0.9). The result is cached under ``~/.cache/unlearnkit/demo/<key>``
   (``$UNLEARNKIT_CACHE`` overrides the root), so later runs skip this step.
2. **Unlearn.** Some customers ask for deletion: their records are unlearned with IHL + FLoRA
   (:func:`unlearnkit.loop.run_unlearning`), keeping the other customers' records (the retain set);
   never-seen customers from the same generator give the forgetting thresholds.
3. **Report.** For the forgotten and the kept customers: MA, EL10 and a leak test (does the model
   still complete their e-mail and phone number?), plus perplexity on general text and the time
   taken. ``compare=True`` adds gradient ascent (full fine-tuning, the paper's baseline) side by side.

``DemoSettings(tiny=True)`` runs the same pipeline on a tiny randomly initialised GPT-Neo with a
locally trained tokenizer (seconds; used by the tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from rich.table import Table

from unlearnkit.config import build_config
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.evaluation import evaluate_memorisation
from unlearnkit.leaks import LeakReport, leak_test
from unlearnkit.loop import RunResult, run_unlearning
from unlearnkit.memorize import memorize
from unlearnkit.modeling import LoadedModel, load_model, train_byte_bpe_tokenizer
from unlearnkit.outputs import atomic_write_json, atomic_write_text, save_model_to_cache
from unlearnkit.perplexity import general_text, general_text_blocks, perplexity
from unlearnkit.progress import Progress
from unlearnkit.records import Record, synthetic_records


@dataclass(frozen=True)
class Preset:
    """What differs between the real-model demo and the tiny test preset."""

    name: str
    # step 1: memorisation (full fine-tuning)
    memorise_lr: float
    memorise_epochs: int
    memorise_batch: int
    memorise_check_every: int
    # step 2: unlearning
    lr: float
    rank: int
    epochs: int
    batch_size: int
    retain_batch_size: int
    svd: str
    ga_lr: float
    eval_batch_size: int
    # step 3: perplexity text
    ppl_tokens: int
    ppl_seq_len: int


PRESETS = {
    "smollm2": Preset("smollm2", memorise_lr=3e-4, memorise_epochs=15, memorise_batch=8, memorise_check_every=1,
                      lr=1e-3, rank=8, epochs=8, batch_size=4, retain_batch_size=4, svd="randomized",
                      ga_lr=5e-5, eval_batch_size=64, ppl_tokens=2048, ppl_seq_len=256),
    "tiny": Preset("tiny", memorise_lr=3e-3, memorise_epochs=300, memorise_batch=8, memorise_check_every=5,
                   lr=1e-2, rank=8, epochs=30, batch_size=2, retain_batch_size=4, svd="exact",
                   ga_lr=1e-3, eval_batch_size=32, ppl_tokens=1024, ppl_seq_len=128),
}
TINY_SHAPE = {"hidden": 128, "layers": 2, "vocab": 1024}
TARGET_MA = 0.9


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs. ``None`` means the preset's value (see :data:`PRESETS`)."""

    tiny: bool = False
    customers: int = 32
    forget: int = 8
    holdout: int = 8
    kept_scored: int = 8
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    rank: int | None = None
    ga_lr: float | None = None

    @property
    def preset(self) -> Preset:
        return PRESETS["tiny" if self.tiny else "smollm2"]

    def check(self) -> None:
        from unlearnkit.errors import UnlearnkitError

        if not 1 <= self.forget < self.customers:
            raise UnlearnkitError(f"--forget must be between 1 and customers - 1 = {self.customers - 1} "
                                  f"(got {self.forget}): some customers must stay.")
        if self.holdout < 2:
            raise UnlearnkitError("The demo needs at least 2 never-seen customers for the thresholds.")

    def records(self) -> list[Record]:
        """All customers (the first ``customers`` were trained on) then the never-seen ones."""
        return synthetic_records(self.customers + self.holdout, self.seed)

    def memorise_key(self) -> str:
        """Names the cached memorised model: everything step 1 depends on, the record texts included."""
        preset = self.preset
        texts = "\n".join(r.text() for r in self.records())
        parts = {"preset": preset.name, "lr": preset.memorise_lr, "epochs": preset.memorise_epochs,
                 "batch": preset.memorise_batch, "target": TARGET_MA, "seed": self.seed,
                 "customers": self.customers, "texts": hashlib.sha256(texts.encode()).hexdigest(),
                 **(TINY_SHAPE if self.tiny else {})}
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
        return f"{preset.name}-{digest}"


@dataclass
class Measured:
    """Leaks (forgotten and kept customers) and general-text perplexity of one model."""

    forget_leaks: LeakReport
    kept_leaks: LeakReport
    perplexity: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"forget_leaks": self.forget_leaks.to_dict(), "kept_leaks": self.kept_leaks.to_dict(),
                "perplexity": self.perplexity, "seconds": round(self.seconds, 2)}


@dataclass
class MethodRun:
    label: str
    result: RunResult
    measured: Measured
    seconds: float


@dataclass
class DemoResult:
    settings: DemoSettings
    output_dir: Path
    memorised: dict[str, Any]
    before: Measured
    runs: list[MethodRun]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def main(self) -> MethodRun:
        return self.runs[0]


def cache_root() -> Path:
    return Path(os.environ.get("UNLEARNKIT_CACHE", Path.home() / ".cache" / "unlearnkit"))


# --------------------------------------------------------------------------------- step 1: memorise


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


def prepare_memorised_model(settings: DemoSettings, progress: Progress) -> tuple[Path, dict[str, Any]]:
    """The cached model that has memorised every customer's record, trained first if missing."""
    directory = cache_root() / "demo" / settings.memorise_key()
    info_path = directory / "memorised.json"
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
        range(preset.memorise_epochs + 1), total=preset.memorise_epochs,
        description=f"Step 1: memorising {len(texts)} customer records", unit="epochs"))
    next(ticks)

    def on_epoch(epoch: int, ma: float) -> None:
        for _ in range(preset.memorise_check_every):
            next(ticks, None)
        if not progress.quiet:
            progress.console.print(f"  memorising: epoch {epoch}, MA {ma:.3f} (target {TARGET_MA})")

    try:
        result = memorize(model, blocks, target_ma=TARGET_MA, max_epochs=preset.memorise_epochs,
                          lr=preset.memorise_lr, batch_size=preset.memorise_batch,
                          check_every=preset.memorise_check_every, seed=settings.seed, on_epoch=on_epoch)
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
        save_model_to_cache(directory, model, tokenizer, "memorised.json", info)
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
                adapter: str = "flora", thresholds: tuple[float, float] | None = None) -> Any:
    """The run config, built in code: records as per-document file sources, IHL + FLoRA by default."""
    preset = settings.preset

    def records(name: str) -> dict[str, Any]:
        return {"source": "file", "path": str(splits / f"{name}.jsonl"), "per_document": True}

    rank = settings.rank or preset.rank
    lr = (settings.ga_lr or preset.ga_lr) if adapter == "none" else (settings.lr or preset.lr)
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
        "output": {"dir": str(output_dir), "overwrite": True},
    })


# --------------------------------------------------------------------------------- step 3: measure


def measure(model: Any, tokenizer: Any, settings: DemoSettings, progress: Progress, label: str) -> Measured:
    """Leak test on the forgotten and the scored kept customers, and perplexity on general text."""
    started = time.perf_counter()
    records = settings.records()
    kept = records[settings.forget: settings.customers][: settings.kept_scored]
    preset = settings.preset
    with progress.status(f"{label}: leak test ({4 * (settings.forget + len(kept))} prompts) and perplexity",
                         announce=False):
        forget_leaks = leak_test(model, tokenizer, records[: settings.forget], batch_size=preset.eval_batch_size)
        kept_leaks = leak_test(model, tokenizer, kept, batch_size=preset.eval_batch_size)
        blocks = general_text_blocks(tokenizer, tokens=preset.ppl_tokens, seq_len=preset.ppl_seq_len)
        ppl = perplexity(model, blocks)
    return Measured(forget_leaks, kept_leaks, ppl, time.perf_counter() - started)


def run_demo(output_dir: Path, settings: DemoSettings | None = None, *, compare: bool = False,
             quiet: bool = False, console: Console | None = None) -> DemoResult:
    """Steps 1-3 (see the module docstring); writes demo.md, demo.png and demo.json next to the run's report."""
    settings = settings or DemoSettings()
    settings.check()
    threads = torch.get_num_threads()
    if settings.tiny:
        # A tiny model's matrices are too small to share between threads: one thread is several times
        # faster, above all on a busy machine.
        torch.set_num_threads(1)
    try:
        return _run_demo(output_dir, settings, compare, quiet, console)
    finally:
        torch.set_num_threads(threads)


def _run_demo(output_dir: Path, settings: DemoSettings, compare: bool, quiet: bool,
              console: Console | None) -> DemoResult:
    console = console or Console(emoji=False, quiet=quiet)
    progress = Progress(console=console, quiet=quiet)
    output_dir = Path(output_dir).expanduser()
    timings: dict[str, float] = {}
    started = time.perf_counter()

    directory, memorised = prepare_memorised_model(settings, progress)
    timings["memorise_s"] = 0.0 if memorised["cached"] else float(memorised["seconds"])
    t0 = time.perf_counter()
    with progress.status("Loading the memorised model", announce=False):
        loaded = load_model(str(directory / "model"))
    splits = write_splits(directory, settings)
    timings["load_s"] = time.perf_counter() - t0
    before = measure(loaded.model, loaded.tokenizer, settings, progress, "memorised model")
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
    result = DemoResult(settings, output_dir, memorised, before, runs, timings)
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
    result = run_unlearning(config, loaded=loaded, console=progress.console, quiet=progress.quiet)
    seconds = time.perf_counter() - t0
    assert result.output_dir is not None
    with progress.status(f"Loading the model unlearned with {label}", announce=False):
        after = load_model(str(result.output_dir / "model"))
    measured = measure(after.model, after.tokenizer, settings, progress, f"after {label}")
    if "retain" not in result.after:
        # Methods that never read the retain set (GA) do not load it, so the run did not score the kept
        # customers; score them here, on the same records the first run scored.
        kept = _kept_blocks(after.tokenizer, settings)
        result.after["retain"] = evaluate_memorisation(after.model, kept, config.eval, progress, f"{label} · kept")
    del after
    return MethodRun(label, result, measured, seconds)


# --------------------------------------------------------------------------------- report


def _leaks(report: LeakReport) -> str:
    return f"{report.total}/{report.probes} ({report.people_leaked}/{report.people} people)"


def demo_rows(result: DemoResult) -> list[tuple[str, ...]]:
    """Rows of the before/after table: a metric, the memorised model, then one column per method."""
    first = result.main.result
    n = first.config.eval.el_n
    kept_n = first.before["retain"]["sequences"] if "retain" in first.before else 0
    forget_n = result.settings.forget

    def per_run(fn: Any) -> list[str]:
        return [fn(run) for run in result.runs]

    def score(role: str, key: str, run: MethodRun) -> str:
        after = run.result.after
        return f"{after[role][key]:.3f}" if role in after else "—"

    rows: list[tuple[str, ...]] = [
        (f"forgotten ({forget_n}): MA", f"{first.before['forget']['ma']:.3f}",
         *per_run(lambda r: score("forget", "ma", r))),
        (f"forgotten ({forget_n}): EL{n}", f"{first.before['forget']['el']:.3f}",
         *per_run(lambda r: score("forget", "el", r))),
        (f"forgotten ({forget_n}): leaks", _leaks(result.before.forget_leaks),
         *per_run(lambda r: _leaks(r.measured.forget_leaks))),
    ]
    if kept_n:
        rows += [
            (f"kept ({kept_n}): MA", f"{first.before['retain']['ma']:.3f}",
             *per_run(lambda r: score("retain", "ma", r))),
            (f"kept ({kept_n}): EL{n}", f"{first.before['retain']['el']:.3f}",
             *per_run(lambda r: score("retain", "el", r))),
            (f"kept ({kept_n}): leaks", _leaks(result.before.kept_leaks),
             *per_run(lambda r: _leaks(r.measured.kept_leaks))),
        ]
    holdout = first.before.get("validation")
    if holdout is not None:
        rows.append((f"never seen ({holdout['sequences']}): MA / EL{n}", f"{holdout['ma']:.3f} / {holdout['el']:.3f}",
                     *per_run(lambda r: (f"{r.result.after['validation']['ma']:.3f} / "
                                         f"{r.result.after['validation']['el']:.3f}")
                              if "validation" in r.result.after else "—")))
    rows += [
        ("general-text perplexity", f"{result.before.perplexity:.2f}",
         *per_run(lambda r: f"{r.measured.perplexity:.2f}")),
        ("forgetting criterion", "", *per_run(lambda r: (
            f"met, epoch {len(r.result.state.history)}" if r.result.state.criterion_met
            else f"NOT met in {len(r.result.state.history)} epochs"))),
        ("unlearning time", "", *per_run(lambda r: f"{r.result.timings['total_s']:.0f}s")),
        ("trainable parameters", "", *per_run(_trainable)),
    ]
    return rows


def _trainable(run: MethodRun) -> str:
    if run.result.config.adapter.name == "none":
        return "all (full fine-tuning)"
    layers = (run.result.adapter_summary or {}).get("layers")
    where = f" on {len(layers)} layers" if isinstance(layers, list) else ""
    return f"rank-{run.result.config.adapter.rank} adapter{where}"


def demo_table(result: DemoResult) -> Table:
    first = result.main.result
    model = "tiny GPT-Neo (test preset)" if result.settings.tiny else "SmolLM2-135M-Instruct"
    table = Table(title=f"Deletion request on {model}: before and after unlearning")
    table.add_column("customers / metric")
    table.add_column("memorised", justify="right")
    for run in result.runs:
        table.add_column(f"after {run.label}", justify="right")
    for row in demo_rows(result):
        table.add_row(*row)
    th = first.thresholds
    table.caption = (f"Leaks: exact e-mail/phone strings in greedy answers to 4 prompts per person. "
                     f"Criterion: forget MA ≤ {th.ma:.3f} and EL{first.config.eval.el_n} ≤ {th.el:.3f} "
                     f"(never-seen customers' means; scoring them is part of the first method's time). "
                     f"Total {result.timings['total_s']:.0f}s.")
    return table


def render_demo_markdown(result: DemoResult) -> str:
    s = result.settings
    header = ["metric", "memorised", *[f"after {run.label}" for run in result.runs]]
    rows = demo_rows(result)
    memorised = result.memorised
    lines = [
        "# Demo: a deletion request",
        "",
        f"Model: {'tiny GPT-Neo (test preset)' if s.tiny else 'SmolLM2-135M-Instruct'}. "
        f"{s.customers} synthetic customers (seed {s.seed}) were memorised "
        f"(MA {memorised['ma']:.3f} after {memorised['epochs']} epochs"
        f"{', from the cache' if memorised['cached'] else ''}); {s.forget} asked to be forgotten; "
        f"{s.holdout} never-seen customers set the thresholds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" + "---:|" * (len(header) - 1),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        "Leak test: for each person, greedy answers to the record template up to `E-mail:` and to `Phone:`, "
        "and to a plain question for each; a leak is the exact true string in the answer. "
        "Perplexity: a fixed slice of Python's `pydoc_data.topics` text.",
        "",
        "![forget MA/EL per epoch, kept MA before/after](demo.png)",
        "",
        "## Timings (s)",
        "",
        *[f"- {k}: {v:.1f}" for k, v in result.timings.items()],
        "",
    ]
    return "\n".join(lines)


def demo_document(result: DemoResult) -> dict[str, Any]:
    return {
        "settings": asdict(result.settings),
        "memorised": result.memorised,
        "before": result.before.to_dict(),
        "runs": [{
            "label": run.label, "method": run.result.config.method.name, "adapter": run.result.config.adapter.name,
            "lr": run.result.config.train.lr, "criterion_met": run.result.state.criterion_met,
            "epochs": run.result.state.history, "before": _means(run.result.before),
            "after": _means(run.result.after), "thresholds": run.result.thresholds.to_dict(),
            "measured": run.measured.to_dict(), "seconds": round(run.seconds, 1),
            "timings": {k: round(v, 2) for k, v in run.result.timings.items()},
        } for run in result.runs],
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
    }


def _means(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {role: {"ma": v["ma"], "el": v["el"], "sequences": v["sequences"]} for role, v in snapshot.items()
            if isinstance(v, dict) and "ma" in v}


def plot_demo(result: DemoResult, path: Path) -> None:
    """demo.png: forget MA and EL per epoch for each method (left), kept MA before/after (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    first = result.main.result
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    colours = ["tab:blue", "tab:red", "tab:green"]
    for run, colour in zip(result.runs, colours, strict=False):
        history = run.result.state.history
        epochs = [0, *[r["epoch"] for r in history]]
        ma = [run.result.before["forget"]["ma"], *[r["forget_ma"] for r in history]]
        el = [run.result.before["forget"]["el"], *[r["forget_el"] for r in history]]
        left.plot(epochs, ma, "-o", color=colour, label=f"{run.label}: forget MA")
        left.plot(epochs, el, "--s", color=colour, label=f"{run.label}: forget EL10")
    left.axhline(first.thresholds.ma, color="grey", linestyle=":", label="MA threshold (never seen)")
    left.axhline(first.thresholds.el, color="black", linestyle=":", label="EL threshold (never seen)")
    left.set_xlabel("epoch (0 = before unlearning)")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylabel("score")
    left.set_ylim(0, 1.05)
    left.set_title("Forgotten customers")
    left.legend(fontsize=7)
    labels = ["memorised", *[run.label for run in result.runs]]
    values = [first.before.get("retain", {}).get("ma", float("nan")),
              *[run.result.after.get("retain", {}).get("ma", float("nan")) for run in result.runs]]
    right.bar(range(len(values)), values, color=["grey", *colours[: len(result.runs)]])
    right.set_xticks(range(len(values)), labels, fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_title("Kept customers: MA")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(temp, dpi=110)
    plt.close(fig)
    os.replace(temp, path)


def write_demo_outputs(result: DemoResult) -> None:
    out = result.output_dir
    plot_demo(result, out / "demo.png")
    atomic_write_text(out / "demo.md", render_demo_markdown(result))
    atomic_write_json(out / "demo.json", demo_document(result))
