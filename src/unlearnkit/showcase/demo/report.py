"""The demo's result and its report: the before/after rows, the rich table, demo.md, demo.json and demo.png."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from unlearnkit.io import atomic_write, atomic_write_json, atomic_write_text
from unlearnkit.ownership import mark_directory
from unlearnkit.results import RunResult
from unlearnkit.showcase.demo.settings import DemoSettings
from unlearnkit.showcase.leaks import LeakReport


@dataclass
class Measured:
    """Leaks (forgotten and kept customers) and general-text perplexity of one model."""

    forget_leaks: LeakReport
    kept_leaks: LeakReport
    perplexity: float
    seconds: float
    forget_reworded: LeakReport | None = None  # the forgotten customers asked in other words

    def to_dict(self) -> dict[str, Any]:
        return {"forget_leaks": self.forget_leaks.to_dict(), "kept_leaks": self.kept_leaks.to_dict(),
                "perplexity": self.perplexity, "seconds": round(self.seconds, 2),
                **({"forget_reworded": self.forget_reworded.to_dict()} if self.forget_reworded else {})}


@dataclass
class MethodRun:
    """One unlearning method's run on the deletion request, and its measurements."""

    label: str
    result: RunResult
    measured: Measured
    seconds: float


@dataclass
class DemoResult:
    """Everything the demo measured, rendered by the functions below."""

    settings: DemoSettings
    output_dir: Path
    memorized: dict[str, Any]
    before: Measured
    runs: list[MethodRun]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def main(self) -> MethodRun:
        return self.runs[0]


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
    if result.before.forget_reworded is not None:
        rows.append((f"forgotten ({forget_n}): leaks, reworded prompts", _leaks(result.before.forget_reworded),
                     *per_run(lambda r: _leaks(r.measured.forget_reworded) if r.measured.forget_reworded else "—")))
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
                     *per_run(lambda r: _ma_el(r.result.after["validation"]) if "validation" in r.result.after
                              else "—")))
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
    if not run.result.config.adapter.adapter_class().has_adapter:
        return "all (full fine-tuning)"
    layers = (run.result.adapter_summary or {}).get("layers")
    where = f" on {len(layers)} layers" if isinstance(layers, list) else ""
    return f"rank-{run.result.config.adapter.rank} adapter{where}"


def demo_table(result: DemoResult) -> Table:
    """The before/after table the CLI prints."""
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
    """demo.md: the table, how leaks and perplexity are measured, and the timings."""
    s = result.settings
    header = ["metric", "memorised", *[f"after {run.label}" for run in result.runs]]
    rows = demo_rows(result)
    memorized = result.memorized
    lines = [
        "# Demo: a deletion request",
        "",
        f"Model: {'tiny GPT-Neo (test preset)' if s.tiny else 'SmolLM2-135M-Instruct'}. "
        f"{s.customers} synthetic customers (seed {s.seed}) were memorised "
        f"(MA {memorized['ma']:.3f} after {memorized['epochs']} epochs"
        f"{', from the cache' if memorized['cached'] else ''}); {s.forget} asked to be forgotten; "
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
    """demo.json: settings, the memorised model, measurements before, and each method's run."""
    return {
        "settings": asdict(result.settings),
        "memorised": result.memorized,  # the key stays: readers of demo.json rely on it
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
        # epochs the stopping rule decided without a full EL (MA above its threshold, or EL proven above
        # its own) are gaps in the curve
        el = [run.result.before["forget"]["el"],
              *[float("nan") if r["forget_el"] is None else r["forget_el"] for r in history]]
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
    try:
        atomic_write(path, lambda temp: fig.savefig(temp, dpi=110))
    finally:
        plt.close(fig)


def write_demo_outputs(result: DemoResult) -> None:
    """demo.png, demo.md and demo.json in the demo's output directory, each written atomically."""
    out = result.output_dir
    plot_demo(result, out / "demo.png")
    atomic_write_text(out / "demo.md", render_demo_markdown(result))
    atomic_write_json(out / "demo.json", demo_document(result))
    mark_directory(out, "demo")  # the run's outputs and these: all the demo wrote (a next demo may replace them)


def _ma_el(scores: dict[str, Any]) -> str:
    el = "—" if scores["el"] is None else f"{scores['el']:.3f}"  # None: not scored (eval.after_el)
    return f"{scores['ma']:.3f} / {el}"
