"""Attacking an unlearned model: each attack on its own copy, every copy measured the same way.

Measured for each: MA and EL₁₀ of the forget rows, the TDEC extraction attack's exact-match rate and the
membership-inference AUCs (forget rows against held-out rows), as :func:`unlearnkit.evaluation.
evaluation_snapshot` computes them for a run. The relearning attack fine-tunes on some forget rows and is
measured on the others (:mod:`unlearnkit.attacks.relearn`); quantisation rounds the weights
(:mod:`unlearnkit.attacks.quantize`), of the whole merged model, or of the base only under a LoRA adapter
kept in full precision. With the scores of the model before unlearning (a run's ``metrics.json``), each
attacked value also gets its recovery fraction: how much of what unlearning removed came back.

On a real model EL_n of forgotten text is the dearest score (every prefix is decoded afresh), and an attack
takes several. So with ``eval.cache_scores`` every copy's MA and EL_n are kept in the score cache by the copy's
weights: an interrupted attack, run again, recomputes only what it had not finished (relearning and rounding
are deterministic, so the copies come out with the same weights).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unlearnkit.attacks import HELD_OUT_ROWS
from unlearnkit.attacks.quantize import QuantSpec, quantize_base_only, quantize_model
from unlearnkit.attacks.relearn import recovery_fraction, relearn, split_forget_rows
from unlearnkit.config import EvalConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.run_sets import RunData
from unlearnkit.evaluation import ScoreCache, cached_memorization, evaluation_snapshot
from unlearnkit.progress import Progress


@dataclass(frozen=True)
class AttackPlan:
    """Which attacks to run, and how hard."""

    relearn_steps: int = 20
    relearn_lr: float = 1e-4
    relearn_fraction: float = 0.5
    relearn_batch_size: int = 8
    quantisations: tuple[QuantSpec, ...] = (QuantSpec(8, 128, True), QuantSpec(4, 128, True), QuantSpec(4, 32, False))
    seed: int = 0


@dataclass
class Before:
    """Per-sequence forget scores of the model before unlearning (a run's metrics.json), for recovery."""

    ma_per_sequence: list[float]
    el_per_sequence: list[float]
    extraction: float | None = None

    def on(self, rows: list[int]) -> dict[str, float | None]:
        return {"ma": statistics.fmean(self.ma_per_sequence[i] for i in rows),
                "el": statistics.fmean(self.el_per_sequence[i] for i in rows)}


@dataclass
class AttackResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def summarise(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The numbers an attack table shows, from an evaluation snapshot."""
    privacy = snapshot.get("privacy", {})
    extraction = privacy.get("extraction_forget", {}).get("exact_match_rate")
    return {"ma": snapshot["forget"]["ma"], "el": snapshot["forget"]["el"], "extraction": extraction,
            "mia_auc": dict(privacy.get("mia_auc", {})), "sequences": snapshot["forget"]["sequences"]}


def run_attacks(model: Any, tokenizer: Any, forget: TokenBlocks, holdout: TokenBlocks, plan: AttackPlan,
                eval_config: EvalConfig, progress: Progress, *, before: Before | None = None,
                adapted: Callable[[], Any] | None = None) -> AttackResult:
    """Every attack of ``plan`` on a copy of ``model`` (the unlearned model, merged); ``adapted`` loads the
    unlearned model as base + LoRA adapter, for quantising the base only (``None``: not an adapter run)."""
    config = eval_config.model_copy(update={"audit": True, "downstream": None})
    result = AttackResult()
    # the held-out rows' own MA and EL are not what an attack changes: scored once, for the snapshots' layout
    held_out = {"validation": {"name": holdout.name, "sequences": len(holdout)}}

    def measure(candidate: Any, blocks: TokenBlocks, label: str, forget_scores: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        known = {**held_out, "forget": forget_scores} if forget_scores is not None else held_out
        snapshot = evaluation_snapshot(candidate, RunData(forget=blocks, validation=holdout), config, progress,
                                       label=label, tokenizer=tokenizer, known=known,
                                       cache=ScoreCache.of(candidate, config))
        return {**summarise(snapshot), "forget_scores": snapshot["forget"]}

    def add(attack: str, rows: str, scores: dict[str, Any], unlearned: dict[str, Any] | None,
            original: dict[str, Any] | None) -> None:
        row = {"attack": attack, "rows": rows, **{k: v for k, v in scores.items() if k != "forget_scores"}}
        if unlearned is not None and original is not None:
            row["recovery"] = {key: recovery_fraction(original.get(key), unlearned.get(key), scores.get(key))
                               for key in ("ma", "el", "extraction")}
        result.rows.append(row)

    everything = list(range(len(forget)))
    original_all = ({**before.on(everything), "extraction": before.extraction} if before is not None else None)
    if original_all is not None:
        result.rows.append({"attack": "before unlearning", "rows": "all", **original_all})
    unlearned_all = measure(model, forget, "unlearned")
    add("none (unlearned)", "all", unlearned_all, None, None)

    if plan.relearn_steps > 0:
        split = split_forget_rows(forget, plan.relearn_fraction, plan.seed)
        rest = f"{len(split.measured_rows)} not attacked"
        original_rest = before.on(split.measured_rows) if before is not None else None
        if original_rest is not None:
            result.rows.append({"attack": "before unlearning", "rows": rest, **original_rest})
        # the same model's MA and EL of these rows are those of the whole set's, row by row
        unlearned_rest = measure(model, split.measured, "unlearned, rows not attacked",
                                 rows_of(unlearned_all["forget_scores"], split.measured_rows, split.measured))
        add("none (unlearned)", rest, unlearned_rest, None, None)
        attacked = copy.deepcopy(model)
        with progress.status(f"relearning: {plan.relearn_steps} steps on {len(split.attack_rows)} forget rows"):
            losses = relearn(attacked, split.attack, steps=plan.relearn_steps, lr=plan.relearn_lr,
                             batch_size=plan.relearn_batch_size, seed=plan.seed)
        relearned = f"relearn {plan.relearn_steps} steps (lr {plan.relearn_lr:g})"
        add(relearned, rest, measure(attacked, split.measured, "relearned"), unlearned_rest, original_rest)
        # the control: text never memorised; if its MA rises as much, relearning taught style, not the rows
        for attack, candidate in (("none (unlearned)", model), (relearned, attacked)):
            scores = cached_memorization(candidate, holdout, config, progress, f"held-out rows, {attack}",
                                         ScoreCache.of(candidate, config))
            result.rows.append({"attack": attack, "rows": HELD_OUT_ROWS, "ma": scores["ma"], "el": scores["el"],
                                "sequences": len(holdout)})
        result.details["relearn"] = {"attack_rows": split.attack_rows, "measured_rows": split.measured_rows,
                                     "losses": losses}
        del attacked

    for spec in plan.quantisations:
        quantised = copy.deepcopy(model)
        try:
            result.details[spec.label] = quantize_model(quantised, spec)
        except ValueError as error:  # a group size that does not divide this model's layers: say so, go on
            result.details[spec.label] = {"skipped": str(error)}
            progress.warn(f"quantise {spec.label} skipped: {error}")
            continue
        add(f"quantise {spec.label}", "all", measure(quantised, forget, spec.label), unlearned_all, original_all)
        del quantised
        if adapted is not None:
            base_quantised = adapted()
            result.details[f"base {spec.label}"] = quantize_base_only(base_quantised, spec)
            add(f"quantise base {spec.label}, adapter kept", "all",
                measure(base_quantised, forget, f"base {spec.label}"), unlearned_all, original_all)
            del base_quantised
    return result


def rows_of(scores: dict[str, Any], rows: list[int], blocks: TokenBlocks) -> dict[str, Any]:
    """The MA and EL of ``rows`` from a snapshot's per-sequence scores of the whole set (``blocks``: those rows)."""
    picked: dict[str, Any] = {"name": blocks.name, "sequences": len(rows)}
    for key in ("ma", "el"):
        values = scores.get(f"{key}_per_sequence")
        picked[f"{key}_per_sequence"] = None if values is None else [values[i] for i in rows]
        picked[key] = None if values is None else statistics.fmean(values[i] for i in rows)
    return picked


def attack_markdown(result: AttackResult, model: str) -> str:
    """The attack table: one row per model state, recovery fractions beside the attacked values."""

    def number(value: Any, percent: bool = True) -> str:
        if value is None:
            return "—"
        return f"{100 * value:.1f}" if percent else f"{value:.2f}"

    lines = [f"**Attacks on {model}.** MA, EL10 and the extraction attack's exact-match rate on the forget rows "
             "(%), membership-inference AUC (loss score) of forget against held-out rows; recovery: the share of "
             "what unlearning removed that the attack brought back (0 nothing, 1 all).", "",
             "| model | rows | MA | EL10 | extraction | MIA AUC | recovery MA | recovery EL10 |",
             "|:---|:---|---:|---:|---:|---:|---:|---:|"]
    for row in result.rows:
        recovery = row.get("recovery", {})
        lines.append(f"| {row['attack']} | {row['rows']} | {number(row.get('ma'))} | {number(row.get('el'))} | "
                     f"{number(row.get('extraction'))} | {number(row.get('mia_auc', {}).get('loss'), False)} | "
                     f"{number(recovery.get('ma'), False)} | {number(recovery.get('el'), False)} |")
    return "\n".join(lines)
