"""How well forgetting holds, for a sweep whose runs used ``eval.rule: paper+mia``: per run the epoch the paper's
rule was first met, whether the forget rows became indistinguishable from held-out rows, and the last epoch's
membership AUCs with their bootstrap intervals (:class:`unlearnkit.stopping.Indistinguishable`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unlearnkit.experiments.figures import done_rows, row_label

Row = dict[str, Any]

CAPTION = ("**Indistinguishability** (eval.rule paper+mia): a run meets it when the forget rows' LOSS and Min-K% "
           "AUCs against held-out rows, each with its bootstrap interval, lie within 0.5 ± the margin; an AUC "
           "near 1 means membership inference still finds the forgotten rows.")


def membership_rows(rows: Sequence[Row]) -> list[Row]:
    """The finished runs judged by the indistinguishability rule."""
    return [row for row in done_rows(rows) if row.get("rule") == "paper+mia"]


def membership_markdown(rows: Sequence[Row]) -> str:
    """One line per run: its forget set, the paper's rule's first epoch, the verdict and the AUCs."""
    lines = [CAPTION, "", "| run | method | paper's rule met at epoch | indistinguishable | LOSS AUC | Min-K% AUC |",
             "|---|---|---:|:---:|---:|---:|"]
    for row in membership_rows(rows):
        verdict = row.get("mia") or {}

        def shown(name: str, verdict: Row = verdict) -> str:
            found = verdict.get(name)
            return "—" if not found else f"{found['auc']:.2f} [{found['low']:.2f}, {found['high']:.2f}]"

        met = "—" if not verdict else ("yes" if verdict.get("met") else "no")
        epoch = row.get("paper_rule_epoch")
        lines.append(f"| `{row['name']}` | {row_label(row)} | {'never' if epoch is None else epoch} | {met} | "
                     f"{shown('loss')} | {shown('min_k')} |")
    return "\n".join(lines)
