"""TOFU's table and figure of a sweep whose runs were scored with ``eval.tofu`` (the picture the TOFU paper and
open-unlearning draw: model utility against forget quality, along the epochs of each method).

A report includes them after Table 1 when its runs carry TOFU's numbers (:func:`unlearnkit.experiments.sweep.
point_row`'s ``tofu``); the target is every run's model before unlearning, so its point is any run's ``before``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from unlearnkit.experiments.figures import done_rows, finite_value, ordered_labels, row_label
from unlearnkit.experiments.sweep import tofu_numbers

Row = dict[str, Any]
RETAIN_MODEL_EVAL = Path("retain-model") / "eval.json"

TITLE = "TOFU: model utility against forget quality along the epochs"
CAPTION = ("One line per run, from the target (the star: every run's model before unlearning) through each "
           "epoch's model (dots) to the last, the retain model a diamond where its scores are in the sweep's "
           "retain-model/eval.json; x: forget quality, the KS-test p-value against the retain model "
           "(log scale, higher is better: 1 is indistinguishable from never having seen the forget authors); y: "
           "model utility (the harmonic mean of probability, ROUGE-L recall and truth ratio on retain, real "
           "authors and world facts).")


def tofu_rows(rows: Sequence[Row]) -> list[Row]:
    """The finished runs that carry TOFU's numbers."""
    return [row for row in done_rows(rows) if row.get("tofu")]


def tofu_markdown(rows: Sequence[Row], retain_model: Row | None = None) -> str:
    """TOFU's table: per run its numbers after unlearning, the target's first and the retain model's (its
    :func:`retain_model_scores`, where given) second."""
    runs = sorted(tofu_rows(rows), key=lambda row: ordered_labels([row_label(r) for r in tofu_rows(rows)])
                  .index(row_label(row)))
    header = ("| method | epochs | params (%) | FLOPs | forget quality ↑ | model utility ↑ | forget truth ratio | "
              "forget ROUGE-L | forget prob. | retain ROUGE-L | forget extraction strength | privacy leak | "
              "answers' EL10 (%) | answers' MA (%) |")
    lines = [header, "|" + "|".join(["---"] + ["---:"] * 13) + "|"]
    target = next((row for row in runs if row["tofu"].get("before")), None)
    if target is not None:
        lines.append("| target (before unlearning) | 0 | | | " + " | ".join(
            _numbers(target["tofu"]["before"]) + _percents(target, "el10_before", "ma_before")) + " |")
    if retain_model is not None:
        lines.append("| retain model (never saw the forget authors) | | | | " + " | ".join(
            _numbers(retain_model) + ["—", "—"]) + " |")
    for row in runs:
        flops = (row.get("flops") or {}).get("total")
        params = row.get("params_pct")
        lines.append(f"| {row_label(row)} | {row.get('epochs', '')} | "
                     f"{'' if params is None else f'{params:.2f}'} | {'' if not flops else f'{flops:.2e}'} | "
                     + " | ".join(_numbers(row["tofu"]["after"]) + _percents(row, "el10", "ma")) + " |")
    return "\n".join(lines)


def _percents(row: Row, *fields: str) -> list[str]:
    """The paper's own EL10 and MA of the forget answers (the run's criterion), as percentages."""
    return ["—" if (value := finite_value(row, field)) is None else f"{100 * value:.1f}" for field in fields]


def _numbers(found: Row) -> list[str]:
    forget, retain = found.get("forget", {}), found.get("retain", {})
    values = [found.get("forget_quality"), found.get("model_utility"), forget.get("truth_ratio"),
              forget.get("rouge_l_recall"), forget.get("prob"), retain.get("rouge_l_recall"),
              found.get("extraction_strength")]
    leak = found.get("privacy_leak")
    return ["—" if v is None else (f"{v:.2e}" if 0 < v < 1e-3 else f"{v:.3f}") for v in values] + [
        "—" if leak is None else f"{leak:+.1f}"]


def retain_model_scores(results: Path) -> Row | None:
    """The retain model's own TOFU numbers, where the sweep's folder holds them: ``retain-model/eval.json``, as
    ``unlearnkit eval RETAIN --suite tofu --retain-model RETAIN --output <sweep>/retain-model`` writes it."""
    found = _retain_model_eval(results)
    return None if found is None else tofu_numbers(found)


def retain_model_aggregates(results: Path) -> str | None:
    """That eval.json without its per-question records (a page's results folder keeps it, small, so the section
    regenerates from the repository alone); None where there is none."""
    found = _retain_model_eval(results)
    if found is None:
        return None
    sets = {role: {k: v for k, v in each.items() if k != "records"} for role, each in found["sets"].items()}
    return json.dumps({**found, "sets": sets}, indent=1, sort_keys=True) + "\n"


def _retain_model_eval(results: Path) -> Row | None:
    try:
        found: Row = json.loads((results / RETAIN_MODEL_EVAL).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found


def tofu_figure(rows: Sequence[Row], retain_model: Row | None = None) -> tuple[Figure | None, str | None]:
    """The figure (the retain model marked where its scores are given), or None and why it was not drawn."""
    runs = [row for row in tofu_rows(rows) if _curve(row)]
    if not runs:
        return None, "no run has TOFU's forget quality (eval.tofu.retain_model) and model utility"
    figure = Figure(figsize=(6.4, 4.4))
    ax = figure.add_subplot()
    target_drawn = False
    for row in sorted(runs, key=row_label):
        xs, ys = zip(*_curve(row), strict=True)
        line = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=row_label(row))[0]
        start = _point(row["tofu"]["before"]) if row["tofu"].get("before") else None
        if start is not None and not target_drawn:
            ax.plot([start[0]], [start[1]], marker="*", markersize=12, color="black", linestyle="none",
                    label="target")
            target_drawn = True
        ax.plot([xs[-1]], [ys[-1]], marker="o", markersize=6, color=line.get_color())
    retain_point = _point(retain_model) if retain_model is not None else None
    if retain_point is not None:
        ax.plot([retain_point[0]], [retain_point[1]], marker="D", markersize=8, color="black", linestyle="none",
                label="retain model")
    ax.set_xscale("log")
    ax.set_xlabel("forget quality (KS p-value, log scale)")
    ax.set_ylabel("model utility")
    ax.legend(fontsize=7)
    figure.tight_layout()
    return figure, None


def _point(found: Row) -> tuple[float, float] | None:
    quality, utility = found.get("forget_quality"), found.get("model_utility")
    if quality is None or utility is None or not quality > 0 or not math.isfinite(utility):
        return None
    return float(quality), float(utility)


def _curve(row: Row) -> list[tuple[float, float]]:
    """(forget quality, model utility) before unlearning, after each epoch and after the run."""
    tofu = row["tofu"]
    points = [tofu.get("before"), *tofu.get("epochs", []), tofu.get("after")]
    return [p for p in (_point(found) for found in points if found) if p is not None]
