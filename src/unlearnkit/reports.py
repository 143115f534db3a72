"""A run's outputs: merged model, adapter, metrics, resolved config and a report a person can read."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from unlearnkit.outputs import atomic_write_json, atomic_write_text, staged_directory

if TYPE_CHECKING:
    from unlearnkit.data.run_sets import RunData
    from unlearnkit.loop import RunResult

PACKAGES = ("unlearnkit", "torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "pydantic")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_outputs(result: RunResult, model: Any, tokenizer: Any, data: RunData,
                      target_modules: list[str]) -> Path:
    """Assemble the output directory in a staging area and move it into place when complete."""
    from unlearnkit.adapters.flora import save_flora_adapter_for_original_base
    from unlearnkit.adapters.lora import merged_model, save_lora_adapter

    config = result.config
    with staged_directory(config.output.dir, config.output.overwrite) as staging:
        if config.adapter.name == "lora":
            save_lora_adapter(model, staging / "adapter")
        elif config.adapter.name == "flora":
            save_flora_adapter_for_original_base(model, staging / "adapter")
        if config.output.save_model:
            plain = merged_model(model) if config.adapter.name != "none" else model
            plain.save_pretrained(staging / "model", safe_serialization=True)
            tokenizer.save_pretrained(staging / "model")
        atomic_write_text(staging / "config.yaml", config.to_yaml())
        atomic_write_json(staging / "run.json", {
            "seed": config.seed,
            "versions": package_versions(),
            "data_fingerprints": data.fingerprints(),
            "data_ids": {"forget": data.forget.ids},
            "target_modules": target_modules,
            "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        })
        atomic_write_json(staging / "metrics.json", metrics_document(result))
        atomic_write_text(staging / "report.md", render_report(result))
    return Path(config.output.dir).expanduser()


def metrics_document(result: RunResult) -> dict[str, Any]:
    return {
        "thresholds": result.thresholds.to_dict(),
        "before": result.before,
        "epochs": result.state.history,
        "after": result.after,
        "criterion_met": result.state.criterion_met,
        "stop_reason": result.state.stop_reason,
        "epochs_run": len(result.state.history),
        "steps": result.state.step,
        "tokens_seen": result.state.tokens_seen,
        "adapter": result.adapter_summary,
    }


def summary_rows(result: RunResult) -> list[tuple[str, str, str]]:
    n = result.config.eval.el_n
    rows = [
        ("forget MA", f"{result.before['forget']['ma']:.3f}", f"{result.after['forget']['ma']:.3f}"),
        (f"forget EL{n}", f"{result.before['forget']['el']:.4f}", f"{result.after['forget']['el']:.4f}"),
    ]
    if "retain" in result.before:
        rows += [
            ("retain MA", f"{result.before['retain']['ma']:.3f}", f"{result.after['retain']['ma']:.3f}"),
            (f"retain EL{n}", f"{result.before['retain']['el']:.4f}", f"{result.after['retain']['el']:.4f}"),
        ]
    if "validation" in result.before:
        rows += [
            ("held-out MA", f"{result.before['validation']['ma']:.3f}", f"{result.after['validation']['ma']:.3f}"),
            (f"held-out EL{n}", f"{result.before['validation']['el']:.4f}",
             f"{result.after['validation']['el']:.4f}"),
        ]
    if "privacy" in result.before:
        b, a = result.before["privacy"], result.after["privacy"]
        if "extraction_forget" in b:
            rows.append(("forget suffix extraction rate", f"{b['extraction_forget']['exact_match_rate']:.3f}",
                         f"{a['extraction_forget']['exact_match_rate']:.3f}"))
        for name, value in b["mia_auc"].items():
            after = a["mia_auc"].get(name)
            rows.append((f"MIA AUC {name}", "n/a" if value is None else f"{value:.3f}",
                         "n/a" if after is None else f"{after:.3f}"))
    return rows


def before_after_table(result: RunResult) -> Table:
    config = result.config
    table = Table(title=f"{config.method.name.upper()} · adapter {config.adapter.name} · {config.model.name}")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for row in summary_rows(result):
        table.add_row(*row)
    table.add_row("thresholds (MA / EL)", f"{result.thresholds.ma:.3f} / {result.thresholds.el:.4f}", "")
    table.caption = f"{result.state.stop_reason}; {len(result.state.history)} epochs, {result.timings['total_s']:.0f}s"
    return table


def _threshold_lines(result: RunResult) -> list[str]:
    th = result.thresholds
    if not th.n_sequences:
        return []
    ma_ci, el_ci = th.ma_ci, th.el_ci
    return [f"Thresholds from {th.n_sequences} held-out sequences: MA {th.ma:.4f} (95% bootstrap interval "
            f"{ma_ci[0]:.4f}-{ma_ci[1]:.4f}), EL{th.n} {th.el:.4f} ({el_ci[0]:.4f}-{el_ci[1]:.4f}).", ""]


def _adapter_lines(result: RunResult) -> list[str]:
    summary = result.adapter_summary
    if not summary:
        return []
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in summary.get("timings", {}).items())
    lines = ["## FLoRA initialisation", "",
             f"{len(summary['layers'])} layers initialised from the forget/retain Fisher ratio "
             f"({summary['forget_tokens']} forget and {summary['retain_tokens']} retain tokens); {timings}."]
    if summary["fallback_layers"]:
        lines.append(f"**{len(summary['fallback_layers'])} layers had all-zero or non-finite importance and fell "
                     f"back to uniform row weights (plain SVD):** {', '.join(summary['fallback_layers'])}.")
    return [*lines, ""]


def render_report(result: RunResult) -> str:
    config, state, th = result.config, result.state, result.thresholds
    n = config.eval.el_n
    verdict = "**Forgetting criterion met**" if state.criterion_met else "**Forgetting criterion NOT met**"
    lines = [
        f"# Unlearning report: {config.method.name.upper()} with adapter `{config.adapter.name}`",
        "",
        f"Model `{config.model.name}`; forget set `{config.data.forget.source}` "
        f"({result.before['forget']['sequences']} sequences of up to {config.data.seq_len} tokens); "
        f"seed {config.seed}.",
        "",
        f"{verdict}: {state.stop_reason}.",
        "",
        f"The criterion (Appendix B): forget-set mean MA ≤ {th.ma:.4f} and mean EL{n} ≤ {th.el:.4f}, "
        + (f"the means of {th.n_sequences} held-out sequences ({th.source})." if th.n_sequences
           else "as given in the config."),
        "",
        "| metric | before | after |",
        "|---|---:|---:|",
        *[f"| {name} | {b} | {a} |" for name, b, a in summary_rows(result)],
        "",
        *_threshold_lines(result),
        *_adapter_lines(result),
        "## Per epoch",
        "",
        f"| epoch | loss | forget MA | forget EL{n} | elapsed (s) | tokens |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['epoch']} | {r.get('loss', float('nan')):.4f} | {r['forget_ma']:.3f} | {_maybe(r['forget_el'])} | "
          f"{r['elapsed_s']:.0f} | {r['tokens_seen']} |" for r in state.history],
        "",
        "## Files",
        "",
        "- `model/`: the unlearned model (adapters merged), loadable with `AutoModelForCausalLM.from_pretrained`.",
    ]
    if config.adapter.name != "none":
        lines.append("- `adapter/`: the LoRA adapter alone, loadable with `PeftModel.from_pretrained(original_base, "
                     "'adapter')`" + (" (applies to the original, untouched base model)." if config.adapter.name ==
                                       "flora" else "."))
    lines += ["- `metrics.json`: before, every epoch, after.",
              "- `config.yaml`: the resolved configuration (`unlearnkit run config.yaml` repeats the run).",
              "- `run.json`: package versions, seed, data fingerprints, target modules, timings.", ""]
    return "\n".join(lines)


def _maybe(value: float | None) -> str:
    return "— (MA above threshold)" if value is None else f"{value:.4f}"
