"""Rendering what a run or an audit measured: the metrics document, tables and the report a person reads."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from rich.table import Table

from unlearnkit.results import RunResult

PACKAGES = ("unlearnkit", "torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "pydantic")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def metrics_document(result: RunResult) -> dict[str, Any]:
    return {  # what happened first: a reader (or a script) needs nothing else to know if the run worked
        "stop_reason": result.state.stop_reason,
        "criterion_met": result.state.criterion_met,
        "collapsed_epoch": result.state.collapsed_epoch,
        "diverged_epoch": result.state.diverged_epoch,
        "warnings": result.state.warnings,
        "resumed_after_epochs": result.state.resumed_after,
        "thresholds": result.thresholds.to_dict(),
        "before": result.before,
        "epochs": result.state.history,
        "after": result.after,
        "epochs_run": len(result.state.history),
        "steps": result.state.step,
        "tokens_seen": result.state.tokens_seen,
        "adapter": result.adapter_summary,
        "compute": result.compute(),
    }


def summary_rows(result: RunResult) -> list[tuple[str, str, str]]:
    n = result.config.eval.el_n
    rows = []
    for role, name in (("forget", "forget"), ("retain", "retain"), ("validation", "held-out")):
        if role not in result.before:
            continue
        before, after = result.before[role], result.after[role]
        rows += [(f"{name} MA", f"{before['ma']:.3f}", f"{after['ma']:.3f}"),
                 (f"{name} EL{n}", f"{before['el']:.4f}",
                  "not scored (eval.after_el)" if after["el"] is None else f"{after['el']:.4f}")]
    if "privacy" in result.before:
        b, a = result.before["privacy"], result.after["privacy"]
        if "extraction_forget" in b:
            rows.append(("forget suffix extraction rate", f"{b['extraction_forget']['exact_match_rate']:.3f}",
                         f"{a['extraction_forget']['exact_match_rate']:.3f}"))
        for name, value in b["mia_auc"].items():
            after = a["mia_auc"].get(name)
            rows.append((f"MIA AUC {name}", "n/a" if value is None else f"{value:.3f}",
                         "n/a" if after is None else f"{after:.3f}"))
    if "downstream" in result.before:
        rows += [(name, before, after) for name, before, after in kept_rows(
            [result.before["downstream"], result.after["downstream"]], details=False)]
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
    if state.collapsed_epoch is not None or state.diverged_epoch is not None:
        verdict = "**Run stopped: the model was being wrecked**"
    else:
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
        *[f"**Warning:** {warning}." for warning in state.warnings],
        *([""] if state.warnings else []),
        *([f"Interrupted and resumed from its checkpoint after epoch(s) {', '.join(map(str, state.resumed_after))}.",
           ""] if state.resumed_after else []),
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
        *_kept_lines(result),
        "## Per epoch",
        "",
        f"| epoch | loss | forget MA | forget EL{n} | elapsed (s) | tokens |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['epoch']} | {r.get('loss', float('nan')):.4f} | {r['forget_ma']:.3f} | {_epoch_el(r)} | "
          f"{r['elapsed_s']:.0f} | {r['tokens_seen']} |" for r in state.history],
        "",
        "## Files",
        "",
        "- `model/`: the unlearned model (adapters merged), loadable with `AutoModelForCausalLM.from_pretrained`.",
    ]
    adapter = config.adapter.adapter_class()
    if adapter.has_adapter:
        lines.append("- `adapter/`: the LoRA adapter alone, loadable with `PeftModel.from_pretrained(original_base, "
                     "'adapter')`" + adapter.export_note)
    lines += ["- `metrics.json`: before, every epoch, after.",
              "- `config.yaml`: the resolved configuration (`unlearnkit run config.yaml` repeats the run).",
              "- `run.json`: package versions, seed, data fingerprints, target modules, timings.", ""]
    return "\n".join(lines)


def _epoch_el(record: dict[str, Any]) -> str:
    """An epoch's EL: its value, or how the stopping rule was decided without it."""
    if "el_scored" in record:
        return f"> {record['el_lower_bound']:.4f} (decided on {record['el_scored']} sequences)"
    if "el_skipped" in record:
        return f"— ({record['el_skipped']})"
    return "— (MA above threshold)" if record["forget_el"] is None else f"{record['forget_el']:.4f}"


def audit_table(snapshot: dict[str, Any], n: int) -> Table:
    """A privacy audit as a table: MA, EL_n and the extraction attack of the forget vs the held-out set, and
    the membership-inference AUCs (0.5 = the forget set is indistinguishable from unseen text)."""
    forget, held = snapshot["forget"], snapshot["validation"]
    table = Table(title="Privacy audit")
    table.add_column("metric")
    table.add_column(f"forget ({forget['sequences']})", justify="right")
    table.add_column(f"held-out ({held['sequences']})", justify="right")
    table.add_row("MA (mean)", f"{forget['ma']:.3f}", f"{held['ma']:.3f}")
    table.add_row(f"EL_{n} (mean)", f"{forget['el']:.3f}", f"{held['el']:.3f}")
    privacy = snapshot.get("privacy", {})
    layout = privacy.get("extraction_layout")
    if layout is not None:
        tag = f"{layout['prefix_start']}+{layout['prefix_len']}→{layout['suffix_len']}"
        f, h = privacy["extraction_forget"], privacy["extraction_validation"]
        table.add_row(f"exact suffix extraction ({tag})", f"{f['exact_match_rate']:.3f}",
                      f"{h['exact_match_rate']:.3f}")
        table.add_row("suffix tokens reproduced (mean)", f"{f['mean_matched_tokens']:.1f}",
                      f"{h['mean_matched_tokens']:.1f}")
    for name, value in privacy.get("mia_auc", {}).items():
        table.add_row(f"MIA AUC {name} (0.5 = forgotten)", "n/a" if value is None else f"{value:.3f}", "")
    return table


def kept_rows(snapshots: list[dict[str, Any]], details: bool = True) -> list[list[str]]:
    """What the model kept, one column per downstream snapshot (:func:`unlearnkit.evaluation.downstream_scores`):
    the paper's Table 1 columns (Reasoning accuracy and Dialogue F1 in %, Pile perplexity), then, with
    ``details``, every task: accuracy (normalised accuracy where lm-eval gives it; LAMBADA's perplexity), F1,
    perplexity, and the number of items scored."""

    def cells(fn: Any) -> list[str]:
        return [fn(s) for s in snapshots]

    def percent(value: Any) -> str:
        return "—" if value is None else f"{100 * float(value):.1f}"

    rows: list[list[str]] = []
    first = snapshots[0]
    if "reasoning" in first:
        rows.append([f"Reasoning (Acc %), {len(first['reasoning'])} tasks", *cells(lambda s: percent(
            s.get("reasoning_acc")))])
    if "dialogue" in first:
        rows.append([f"Dialogue (F1 %), {len(first['dialogue'])} sets", *cells(lambda s: percent(
            s.get("dialogue_f1")))])
    if "pile" in first.get("perplexity", {}):
        rows.append(["Pile (PPL)", *cells(lambda s: f"{s['perplexity']['pile']['perplexity']:.2f}")])
    if not details:
        return rows
    for task, scores in first.get("reasoning", {}).items():
        extra = " / acc_norm" if "acc_norm" in scores else (" / ppl" if "perplexity" in scores else "")
        rows.append([f"  {task}: acc{extra} ({scores['n']} items)", *cells(lambda s, t=task: _task_cell(
            s["reasoning"][t]))])
    for name, scores in first.get("dialogue", {}).items():
        rows.append([f"  {name}: F1 ({scores['n']} examples)", *cells(lambda s, n=name: percent(
            s["dialogue"][n]["f1"]))])
    for name, scores in first.get("perplexity", {}).items():
        rows.append([f"  {name}: PPL ({scores['documents']} documents, {scores['tokens']} tokens)",
                     *cells(lambda s, n=name: f"{s['perplexity'][n]['perplexity']:.2f}")])
    return rows


def _task_cell(scores: dict[str, Any]) -> str:
    cell = f"{100 * scores['acc']:.1f}"
    if "acc_norm" in scores:
        cell += f" / {100 * scores['acc_norm']:.1f}"
    elif "perplexity" in scores:
        cell += f" / {scores['perplexity']:.2f}"
    return cell


def _kept_lines(result: RunResult) -> list[str]:
    if "downstream" not in result.before:
        return []
    options = result.before["downstream"]
    limit = "all items" if options.get("limit") is None else f"the first {options['limit']} items of each task"
    return ["## What the model kept", "",
            f"Suite `{options['suite']}` ({limit}), before and after unlearning.", "",
            "| task | before | after |", "|---|---:|---:|",
            *[f"| {name.strip()} | {b} | {a} |" for name, b, a in kept_rows(
                [result.before["downstream"], result.after["downstream"]])], "",
            *_change_lines(result.before["downstream"], result.after["downstream"])]


def reasoning_change_sentence(change: dict[str, Any]) -> str:
    """:func:`unlearnkit.metrics.harness.reasoning_change` in words, in points."""
    def points(value: float) -> str:
        return f"{100 * value:+.1f}".replace("-", "−")

    return (f"Reasoning accuracy changed by {points(change['change'])} points ({100 * change['confidence']:.0f} % "
            f"interval {points(change['low'])} to {points(change['high'])}, paired over the {change['items']} "
            f"items of {change['tasks']} tasks both were scored on).")


def _change_lines(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The paired change of reasoning, where both snapshots kept each item's result (a cached snapshot from
    before items were kept has none)."""
    from unlearnkit.metrics.harness import change_where_kept

    change = change_where_kept(before.get("reasoning"), after.get("reasoning"))
    return [] if change is None else [reasoning_change_sentence(change), ""]


def kept_table(snapshot: dict[str, Any], title: str) -> Table:
    """One model's downstream snapshot as a table (``unlearnkit eval``)."""
    table = Table(title=title)
    table.add_column("task")
    table.add_column("score", justify="right")
    for name, value in kept_rows([snapshot]):
        table.add_row(name, value)
    limit = "all items" if snapshot.get("limit") is None else f"first {snapshot['limit']} items per task"
    table.caption = (f"suite {snapshot['suite']}, {limit}; reasoning: acc (/ acc_norm, / perplexity for LAMBADA) "
                     f"in %; dialogue: unigram F1 in %")
    return table


def render_kept_markdown(model: str, snapshot: dict[str, Any]) -> str:
    """eval.md: one model's downstream snapshot in the shape of the paper's Table 1, then every task."""
    limit = "all items" if snapshot.get("limit") is None else f"the first {snapshot['limit']} items of each task"
    return "\n".join([
        f"# What `{model}` knows: suite `{snapshot['suite']}`", "",
        f"Scored on {limit}. Reasoning: accuracy through lm-evaluation-harness (acc / acc_norm, %; LAMBADA: acc "
        "/ perplexity); dialogue: unigram F1 of greedy replies (%); perplexity: whole documents, strided window.",
        "", "| task | score |", "|---|---:|",
        *[f"| {name.strip()} | {value} |" for name, value in kept_rows([snapshot])], "",
        *([f"Against `{snapshot['reasoning_change']['baseline']}`: "
           f"{reasoning_change_sentence(snapshot['reasoning_change'])}", ""] if "reasoning_change" in snapshot else []),
        "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in snapshot.get("seconds", {}).items()), "",
    ])


def tofu_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """TOFU's table of one model: forget quality and model utility, then each set's three numbers."""
    def number(value: Any, digits: int = 4) -> str:
        return "—" if value is None else (f"{value:.3g}" if value < 1e-3 else f"{value:.{digits}f}")

    leak = result.get("privacy_leak")
    rows = [("forget quality (KS p-value)", number(result.get("forget_quality"))),
            ("model utility", number(result.get("model_utility"))),
            ("forget extraction strength", number(result.get("extraction_strength"))),
            ("Min-K% AUC, forget against held-out", number(result.get("min_k_auc"))),
            ("privacy leak (%, against the retain model)", "—" if leak is None else f"{leak:+.1f}")]
    for role, found in result["sets"].items():
        if role == "holdout":
            continue  # the privacy leak's non-members
        truth = "truth ratio min(R, 1/R)" if role == "forget" else "truth ratio max(0, 1 − R)"
        rows += [(f"{role}: probability", number(found["prob"])),
                 (f"{role}: ROUGE-L recall", number(found["rouge_l_recall"])),
                 (f"{role}: {truth}", number(found["truth_ratio"]))]
    return rows


def tofu_table(result: dict[str, Any], title: str) -> Table:
    """One model's TOFU scores as a table (``unlearnkit eval --suite tofu``)."""
    table = Table(title=title)
    table.add_column("TOFU")
    table.add_column("value", justify="right")
    for name, value in tofu_rows(result):
        table.add_row(name, value)
    questions = ", ".join(f"{role} {found['questions']}" for role, found in result["sets"].items())
    table.caption = f"{result['split']}, template {result['template']}; questions: {questions}"
    return table


def render_tofu_markdown(model: str, result: dict[str, Any]) -> str:
    """eval.md of ``unlearnkit eval --suite tofu``: TOFU's table (the per-question records are in eval.json)."""
    questions = ", ".join(f"{role} {found['questions']}" for role, found in result["sets"].items())
    return "\n".join([
        f"# TOFU scores of `{model}`: {result['split']}", "",
        f"Template `{result['template']}`; questions scored: {questions} ({result['items']}). Computed as TOFU's "
        "code does (locuslab/tofu); forget quality needs --retain-model.", "",
        "| TOFU | value |", "|---|---:|", *[f"| {name} | {value} |" for name, value in tofu_rows(result)], "",
    ])
