"""The stopping rule: what the loop asks after each epoch — the scores the rule needs, "is forgetting met?",
"does the run stop?" — and before training, "is there anything to forget?".

The paper's rule (Appendix B) is :class:`PaperCriterion`: forget-set mean MA and EL_n at or below the held-out
set's; :class:`Indistinguishable` adds that membership inference cannot tell the forget rows from held-out ones
(``eval.rule: paper+mia``). A benchmark with another rule supplies its own :class:`StoppingRule`; the loop does
not change. What a rule adds to an epoch's record goes under ``epoch_record`` in its scores (the membership
verdict; :class:`WithTofu`: TOFU's numbers, so that a run draws TOFU's curve of model utility against forget
quality).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from unlearnkit.config import EvalConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.evaluation import evaluate_memorization
from unlearnkit.metrics.memorization import teacher_forced_pass
from unlearnkit.metrics.privacy import MIN_K_FRACTION, auc, auc_interval, likelihood_scores
from unlearnkit.metrics.thresholds import Thresholds
from unlearnkit.progress import Progress


class StoppingRule:
    """Asked by the loop after each epoch (on the main process) and once before training."""

    def epoch_scores(self, model: Any, forget: TokenBlocks, progress: Progress, epoch: int) -> dict[str, Any]:
        """What the rule measures after an epoch (at least ``ma`` and ``el``, either possibly ``None``)."""
        raise NotImplementedError

    def met(self, scores: dict[str, Any]) -> bool:
        """Whether forgetting is met by these scores."""
        raise NotImplementedError

    def stops(self, scores: dict[str, Any]) -> bool:
        """Whether the run stops after the epoch these scores are of."""
        return False

    def shortfall(self, scores: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
        """Why a run whose last epoch scored ``scores`` (its epochs' records: ``history``) did not meet the rule,
        where a plain "not met" would hide it."""
        return None


class PaperCriterion(StoppingRule):
    """Appendix B: stop once the forget set's mean MA and EL_n are both at or below the held-out thresholds (with
    ``eval.early_stop``; without it every epoch runs and the criterion is only recorded)."""

    def __init__(self, thresholds: Thresholds, config: EvalConfig, membership: bool = False) -> None:
        self.thresholds = thresholds
        self.config = config
        self.membership = membership  # keep each row's LOSS and Min-K% scores of the same pass

    def epoch_scores(self, model: Any, forget: TokenBlocks, progress: Progress, epoch: int,
                     el_skipped: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
        # with per_epoch_el "decide", only what the rule needs to decide (exactly the same decision)
        decide = (self.thresholds.ma, self.thresholds.el) if self.config.per_epoch_el == "decide" else None
        return evaluate_memorization(model, forget, self.config, progress, label=f"epoch {epoch} · forget",
                                     thresholds=decide, membership=self.membership,
                                     el_skipped=el_skipped if decide is not None else None)

    def met_epochs(self, history: Sequence[dict[str, Any]]) -> list[int]:
        """The epochs of ``history`` (a run's per-epoch records) after which this rule was met."""
        return [e["epoch"] for e in history if e.get("forget_el") is not None
                and self.thresholds.forgotten(e["forget_ma"], e["forget_el"])]

    def met(self, scores: dict[str, Any]) -> bool:
        return scores["el"] is not None and self.thresholds.forgotten(scores["ma"], scores["el"])

    def stops(self, scores: dict[str, Any]) -> bool:
        return self.config.early_stop and self.met(scores)


class Indistinguishable(StoppingRule):
    """``eval.rule: paper+mia``: the paper's rule, and the forget rows indistinguishable from the held-out rows by
    membership inference. After each epoch, the LOSS and Min-K% scores of the forget rows (from the pass the
    paper's rule makes) and of the held-out rows (one teacher-forced pass under the current model) give an AUC
    each, forget as members; the rule is met when each AUC's bootstrap interval (``eval.mia_confidence``) lies
    within ``0.5 ± eval.mia_margin``, so that a small set does not pass by noise, nor a set forgotten past
    never-seen text (an AUC well below 0.5 tells the rows apart as surely)."""

    def __init__(self, rule: PaperCriterion, config: EvalConfig, validation: TokenBlocks,
                 history: Sequence[dict[str, Any]] = ()) -> None:
        self.rule, self.config, self.validation, self.history = rule, config, validation, history

    def epoch_scores(self, model: Any, forget: TokenBlocks, progress: Progress, epoch: int) -> dict[str, Any]:
        # Once the paper's rule has been met (the first such epoch is the one reported), an epoch whose forget rows
        # membership inference still tells apart cannot meet this rule, whatever its EL_n: the exact EL_n of
        # half-forgotten rows, the dearest score of a run, is then left out (per_epoch_el "decide").
        paper_met = self.rule.met_epochs(self.history)
        found: dict[str, Any] = {}

        def el_skipped(scores: dict[str, Any]) -> str | None:
            found["mia"] = self._verdict(model, scores["membership"], progress, epoch)
            if found["mia"]["met"] or not paper_met:
                return None
            return (f"the paper's rule was met after epoch {paper_met[0]} and membership inference still tells the "
                    "rows apart")

        scores = self.rule.epoch_scores(model, forget, progress, epoch, el_skipped=el_skipped)
        member = scores.pop("membership")
        verdict = found.get("mia") or self._verdict(model, member, progress, epoch)
        return {**scores, "mia": verdict, "epoch_record": {**scores.get("epoch_record", {}), "mia": verdict}}

    def _verdict(self, model: Any, member: dict[str, list[float]], progress: Progress, epoch: int
                 ) -> dict[str, Any]:
        with progress.status(f"epoch {epoch} · held-out: membership scores of {len(self.validation)} sequences",
                             announce=False):
            held_out = teacher_forced_pass(model, self.validation.input_ids, self.validation.attention_mask,
                                           self.config.batch_size, self.validation.loss_mask, with_log_probs=True)
        assert held_out.log_probs is not None
        return membership_verdict(member, likelihood_scores(held_out.log_probs, MIN_K_FRACTION), self.config,
                                  seed=epoch)

    def met(self, scores: dict[str, Any]) -> bool:
        # before training there are no membership scores: the rule is not met, and the run trains
        return self.rule.met(scores) and bool(scores.get("mia", {}).get("met"))

    def stops(self, scores: dict[str, Any]) -> bool:
        return self.config.early_stop and self.met(scores)

    def shortfall(self, scores: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
        verdict = scores.get("mia")
        paper = self.rule.met_epochs(history)
        if verdict is None or verdict["met"] or not paper:
            return None
        found = "; ".join(f"{SCORE_NAMES[name]} AUC {verdict[name]['auc']:.2f} "
                          f"({100 * verdict['confidence']:.0f} % interval {verdict[name]['low']:.2f}-"
                          f"{verdict[name]['high']:.2f})" for name in SCORE_NAMES)
        return (f"the paper's rule was met (first after epoch {paper[0]}), but membership inference still tells the "
                f"forget rows from held-out rows (last epoch: {found}; indistinguishable means within 0.5 ± "
                f"{verdict['margin']})")


SCORE_NAMES = {"loss": "LOSS", "min_k": "Min-K%"}


def membership_verdict(member: dict[str, list[float]], nonmember: dict[str, list[float]], config: EvalConfig,
                       seed: int = 0) -> dict[str, Any]:
    """Each score's AUC (forget rows as members) with its bootstrap interval, and whether every interval lies
    within ``0.5 ± config.mia_margin``."""
    verdict: dict[str, Any] = {"margin": config.mia_margin, "confidence": config.mia_confidence}
    for name in SCORE_NAMES:
        low, high = auc_interval(member[name], nonmember[name], config.bootstrap, config.mia_confidence, seed)
        verdict[name] = {"auc": auc(member[name], nonmember[name]), "low": low, "high": high}
    verdict["met"] = all(0.5 - config.mia_margin <= verdict[name]["low"] and
                         verdict[name]["high"] <= 0.5 + config.mia_margin for name in SCORE_NAMES)
    return verdict


class WithTofu(StoppingRule):
    """A rule, and TOFU's numbers after each epoch (``eval.tofu.every_epoch``): model utility and forget quality,
    the curve between them. The forget set's greedy answers (its ROUGE) and the per-question records come before
    and after only, in the snapshots; what an epoch scored is kept by its weights, so the evaluation after the
    last epoch adds only those answers."""

    def __init__(self, rule: StoppingRule, config: EvalConfig, tokenizer: Any, data_dir: Any) -> None:
        self.rule, self.config, self.tokenizer, self.data_dir = rule, config, tokenizer, data_dir

    def epoch_scores(self, model: Any, forget: TokenBlocks, progress: Progress, epoch: int) -> dict[str, Any]:
        from unlearnkit.evaluation import ScoreCache, retain_model_reference
        from unlearnkit.metrics.tofu import UTILITY_SETS, tofu_evaluation

        options = self.config.tofu
        assert options is not None
        scores = self.rule.epoch_scores(model, forget, progress, epoch)
        reference = retain_model_reference(options, self.data_dir) if options.retain_model else None
        found = tofu_evaluation(model, self.tokenizer, options, self.data_dir, progress, f"epoch {epoch}",
                                reference, cache=ScoreCache.of(model, self.config), generate_roles=UTILITY_SETS,
                                privacy=False)
        found["sets"] = {role: {k: v for k, v in each.items() if k != "records"}
                         for role, each in found["sets"].items()}
        return {**scores, "epoch_record": {**scores.get("epoch_record", {}), "tofu": found}}

    def met(self, scores: dict[str, Any]) -> bool:
        return self.rule.met(scores)

    def stops(self, scores: dict[str, Any]) -> bool:
        return self.rule.stops(scores)

    def shortfall(self, scores: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
        return self.rule.shortfall(scores, history)


def stopping_rule(config: EvalConfig, thresholds: Thresholds, *, tokenizer: Any = None,
                  data_dir: Any = None, validation: TokenBlocks | None = None,
                  history: Sequence[dict[str, Any]] = ()) -> StoppingRule:
    """The rule a run's evaluation options give (``validation``: the held-out rows ``paper+mia`` compares with;
    ``history``: the run's epoch records so far)."""
    rule: StoppingRule = PaperCriterion(thresholds, config, membership=config.rule == "paper+mia")
    if config.rule == "paper+mia":
        if validation is None:
            raise ValueError("eval.rule paper+mia needs the held-out rows")
        assert isinstance(rule, PaperCriterion)
        rule = Indistinguishable(rule, config, validation, history)
    if config.tofu is not None and config.tofu.every_epoch:
        rule = WithTofu(rule, config, tokenizer, data_dir)
    return rule


def end_of_epochs(config: EvalConfig, epochs: int, criterion_met: bool) -> str:
    """Why a run that used all its ``epochs`` stopped: the criterion missed, or (``early_stop`` off, as TOFU's
    fixed-epoch protocol has it) only recorded, which is not a failure of the run."""
    if config.early_stop:
        return f"forgetting criterion NOT met within {epochs} epochs"
    verdict = "was met after at least one epoch" if criterion_met else "was NOT met after any epoch"
    return (f"all {epochs} epochs ran (eval.early_stop off: the forgetting criterion is recorded, not used to "
            f"stop); it {verdict}")
