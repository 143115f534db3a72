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

from unlearnkit.attacks import HELD_OUT_ROWS, specific_recovery
from unlearnkit.attacks.quantize import QuantSpec, quantize_base_only, quantize_model
from unlearnkit.attacks.relearn import (
    lora_relearn,
    recovery_fraction,
    relearn,
    split_forget_rows,
)
from unlearnkit.config import EvalConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.run_sets import RunData
from unlearnkit.evaluation import ScoreCache, cached_memorization, evaluation_snapshot
from unlearnkit.progress import Progress

# why a model without a run's retain set gets no unrelated fine-tuning unless the text is named
UNRELATED_MISSING = "no unrelated text to fine-tune on (the model has no run's retain set and none was named)"


@dataclass(frozen=True)
class AttackPlan:
    """Which attacks to run, and how hard."""

    relearn_steps: int = 20
    relearn_lr: float = 1e-4
    relearn_fraction: float = 0.5
    relearn_batch_size: int = 8
    lora_relearn_rank: int = 8  # the LoRA attacker on the same rows (0: none)
    lora_relearn_lr: float = 1e-3
    unrelated_steps: int = 20  # fine-tuning on unrelated text (the run's retain set), Łucki et al. 2024 (0: none)
    quantisations: tuple[QuantSpec, ...] = (QuantSpec(8, 128, True), QuantSpec(4, 128, True), QuantSpec(4, 32, False))
    seed: int = 0
    score_el: bool = True  # False: MA, extraction and membership inference only (EL_n is an attack's dearest score)


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
                adapted: Callable[[], Any] | None = None, unrelated: TokenBlocks | None = None) -> AttackResult:
    """Every attack of ``plan`` on a copy of ``model`` (the unlearned model, merged); ``adapted`` loads the
    unlearned model as base + LoRA adapter, for quantising the base only (``None``: not an adapter run);
    ``unrelated`` is the text the unrelated fine-tuning trains on (``None``: that attack is skipped).

    Each fine-tuning attack is measured on forget rows it never trained on and, as its control, on the held-out
    rows: its ``specific_recovery`` is what came back on the forget rows beyond what held-out text gained."""
    attacks = _Attacks(model, tokenizer, holdout, eval_config, progress, plan.score_el)
    everything = list(range(len(forget)))
    original_all = ({**before.on(everything), "extraction": before.extraction} if before is not None else None)
    if original_all is not None:
        attacks.result.rows.append({"attack": "before unlearning", "rows": "all", **original_all})
    unlearned_all = attacks.measure(model, forget, "unlearned")
    attacks.add("none (unlearned)", "all", unlearned_all, None, None)
    if plan.relearn_steps > 0 or plan.unrelated_steps > 0 and unrelated is not None:
        attacks.held_out_unlearned = attacks.control(model, "none (unlearned)")
    if plan.relearn_steps > 0:
        attacks.relearning(forget, plan, before, unlearned_all)
    if plan.unrelated_steps > 0 and unrelated is not None:
        attacked = copy.deepcopy(model)
        with progress.status(f"fine-tuning on unrelated text: {plan.unrelated_steps} steps on {unrelated.name}"):
            losses = relearn(attacked, unrelated, steps=plan.unrelated_steps, lr=plan.relearn_lr,
                             batch_size=plan.relearn_batch_size, seed=plan.seed)
        attacks.fine_tuned(f"fine-tune on unrelated text {plan.unrelated_steps} steps (lr {plan.relearn_lr:g})",
                           "all", attacked, forget, unlearned_all, original_all)
        attacks.result.details["unrelated"] = {"text": unrelated.name, "rows": len(unrelated), "losses": losses}
        del attacked
    elif plan.unrelated_steps > 0:  # recorded, so the table's empty cells say why
        attacks.result.details["unrelated"] = {"skipped": UNRELATED_MISSING}
    for spec in plan.quantisations:
        attacks.quantisation(spec, forget, unlearned_all, original_all, adapted)
    return attacks.result


class _Attacks:
    """One attack run's shared state: the result it fills, how a copy is measured, and the control."""

    def __init__(self, model: Any, tokenizer: Any, holdout: TokenBlocks, eval_config: EvalConfig,
                 progress: Progress, score_el: bool = True) -> None:
        self.model, self.tokenizer, self.holdout, self.progress = model, tokenizer, holdout, progress
        self.score_el = score_el
        self.config = eval_config.model_copy(update={"audit": True, "downstream": None})
        self.result = AttackResult()
        self.held_out_unlearned: dict[str, Any] = {}
        # the held-out rows' own MA and EL are not what an attack changes: scored once, for the snapshots' layout
        self.held_out = {"validation": {"name": holdout.name, "sequences": len(holdout)}}

    def measure(self, candidate: Any, blocks: TokenBlocks, label: str, forget_scores: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        known = {**self.held_out, "forget": forget_scores} if forget_scores is not None else self.held_out
        snapshot = evaluation_snapshot(candidate, RunData(forget=blocks, validation=self.holdout), self.config,
                                       self.progress, label=label, tokenizer=self.tokenizer, known=known,
                                       cache=ScoreCache.of(candidate, self.config),
                                       el_roles=("forget",) if self.score_el else ())
        forget = self._el_kept(snapshot["forget"])
        return {**summarise({**snapshot, "forget": forget}), "forget_scores": forget}

    def _el_kept(self, scores: dict[str, Any]) -> dict[str, Any]:
        # without EL, none at all: a copy the score cache knew would otherwise fill some cells of the table only
        return scores if self.score_el else {**scores, "el": None, "el_per_sequence": None}

    def add(self, attack: str, rows: str, scores: dict[str, Any], unlearned: dict[str, Any] | None,
            original: dict[str, Any] | None) -> dict[str, Any]:
        row = {"attack": attack, "rows": rows, **{k: v for k, v in scores.items() if k != "forget_scores"}}
        if unlearned is not None and original is not None:
            row["recovery"] = {key: recovery_fraction(original.get(key), unlearned.get(key), scores.get(key))
                               for key in ("ma", "el", "extraction")}
        self.result.rows.append(row)
        return row

    def control(self, candidate: Any, attack: str) -> dict[str, Any]:
        """The held-out rows under ``candidate``: text never memorised, so what rises there was not the rows."""
        scores = self._el_kept(cached_memorization(candidate, self.holdout, self.config, self.progress,
                                                   f"held-out rows, {attack}", ScoreCache.of(candidate, self.config),
                                                   with_el=self.score_el))
        self.result.rows.append({"attack": attack, "rows": HELD_OUT_ROWS, "ma": scores["ma"], "el": scores["el"],
                                 "sequences": len(self.holdout)})
        return scores

    def fine_tuned(self, attack: str, rows: str, candidate: Any, blocks: TokenBlocks, unlearned: dict[str, Any],
                   original: dict[str, Any] | None) -> None:
        """A fine-tuned copy measured on ``blocks`` and on the control, with its recovery and specific recovery."""
        row = self.add(attack, rows, self.measure(candidate, blocks, attack), unlearned, original)
        held_out_attacked = self.control(candidate, attack)
        if original is not None:
            row["specific_recovery"] = {key: specific_recovery(
                original.get(key), unlearned.get(key), row.get(key), self.held_out_unlearned.get(key),
                held_out_attacked.get(key)) for key in ("ma", "el")}

    def relearning(self, forget: TokenBlocks, plan: AttackPlan, before: Before | None,
                   unlearned_all: dict[str, Any]) -> None:
        """Relearning every weight, then through a LoRA adapter, on part of the forget rows; the rest measured."""
        split = split_forget_rows(forget, plan.relearn_fraction, plan.seed)
        rest = f"{len(split.measured_rows)} not attacked"
        original_rest = before.on(split.measured_rows) if before is not None else None
        if original_rest is not None:
            self.result.rows.append({"attack": "before unlearning", "rows": rest, **original_rest})
        # the same model's MA and EL of these rows are those of the whole set's, row by row
        unlearned_rest = self.measure(self.model, split.measured, "unlearned, rows not attacked",
                                      rows_of(unlearned_all["forget_scores"], split.measured_rows, split.measured))
        self.add("none (unlearned)", rest, unlearned_rest, None, None)
        attacked = copy.deepcopy(self.model)
        with self.progress.status(f"relearning: {plan.relearn_steps} steps on {len(split.attack_rows)} forget rows"):
            losses = relearn(attacked, split.attack, steps=plan.relearn_steps, lr=plan.relearn_lr,
                             batch_size=plan.relearn_batch_size, seed=plan.seed)
        self.fine_tuned(f"relearn {plan.relearn_steps} steps (lr {plan.relearn_lr:g})", rest, attacked,
                        split.measured, unlearned_rest, original_rest)
        self.result.details["relearn"] = {"attack_rows": split.attack_rows, "measured_rows": split.measured_rows,
                                          "losses": losses}
        del attacked
        if plan.lora_relearn_rank > 0:
            with self.progress.status(f"relearning with a rank-{plan.lora_relearn_rank} LoRA adapter"):
                attacked, losses = lora_relearn(copy.deepcopy(self.model), split.attack, rank=plan.lora_relearn_rank,
                                                steps=plan.relearn_steps, lr=plan.lora_relearn_lr,
                                                batch_size=plan.relearn_batch_size, seed=plan.seed)
            self.fine_tuned(f"LoRA relearn r{plan.lora_relearn_rank} {plan.relearn_steps} steps "
                            f"(lr {plan.lora_relearn_lr:g})", rest, attacked, split.measured, unlearned_rest,
                            original_rest)
            self.result.details["lora_relearn"] = {"rank": plan.lora_relearn_rank, "losses": losses}
            del attacked

    def quantisation(self, spec: QuantSpec, forget: TokenBlocks, unlearned_all: dict[str, Any],
                     original_all: dict[str, Any] | None, adapted: Callable[[], Any] | None) -> None:
        """The merged model rounded, and for an adapter run the base alone under the adapter kept."""
        quantised = copy.deepcopy(self.model)
        try:
            self.result.details[spec.label] = quantize_model(quantised, spec)
        except ValueError as error:  # a group size that does not divide this model's layers: say so, go on
            self.result.details[spec.label] = {"skipped": str(error)}
            self.progress.warn(f"quantise {spec.label} skipped: {error}")
            return
        self.add(f"quantise {spec.label}", "all", self.measure(quantised, forget, spec.label), unlearned_all,
                 original_all)
        del quantised
        if adapted is not None:
            base_quantised = adapted()
            self.result.details[f"base {spec.label}"] = quantize_base_only(base_quantised, spec)
            self.add(f"quantise base {spec.label}, adapter kept", "all",
                     self.measure(base_quantised, forget, f"base {spec.label}"), unlearned_all, original_all)
            del base_quantised


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
             "what unlearning removed that the attack brought back (0 nothing, 1 all); specific: beyond what the "
             "same attack gave held-out text (the control rows).", "",
             "| model | rows | MA | EL10 | extraction | MIA AUC | recovery MA | recovery EL10 | specific MA | "
             "specific EL10 |",
             "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result.rows:
        recovery, specific = row.get("recovery", {}), row.get("specific_recovery", {})
        lines.append(f"| {row['attack']} | {row['rows']} | {number(row.get('ma'))} | {number(row.get('el'))} | "
                     f"{number(row.get('extraction'))} | {number(row.get('mia_auc', {}).get('loss'), False)} | "
                     f"{number(recovery.get('ma'), False)} | {number(recovery.get('el'), False)} | "
                     f"{number(specific.get('ma'), False)} | {number(specific.get('el'), False)} |")
    not_run = [f"- {name}: {detail['skipped']}" for name, detail in result.details.items()
               if isinstance(detail, dict) and "skipped" in detail]
    if not_run:
        lines += ["", "Not run:", *not_run]
    return "\n".join(lines)
