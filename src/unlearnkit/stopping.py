"""The stopping rule: what the loop asks after each epoch — the scores the rule needs, "is forgetting met?",
"does the run stop?" — and before training, "is there anything to forget?".

The paper's rule (Appendix B) is :class:`PaperCriterion`: forget-set mean MA and EL_n at or below the held-out
set's. A benchmark with another rule supplies its own :class:`StoppingRule`; the loop does not change. What a rule
adds to an epoch's record goes under ``epoch_record`` in its scores (:class:`WithTofu`: TOFU's numbers, so that a
run draws TOFU's curve of model utility against forget quality).
"""

from __future__ import annotations

from typing import Any

from unlearnkit.config import EvalConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.evaluation import evaluate_memorization
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


class PaperCriterion(StoppingRule):
    """Appendix B: stop once the forget set's mean MA and EL_n are both at or below the held-out thresholds (with
    ``eval.early_stop``; without it every epoch runs and the criterion is only recorded)."""

    def __init__(self, thresholds: Thresholds, config: EvalConfig) -> None:
        self.thresholds = thresholds
        self.config = config

    def epoch_scores(self, model: Any, forget: TokenBlocks, progress: Progress, epoch: int) -> dict[str, Any]:
        # with per_epoch_el "decide", only what the rule needs to decide (exactly the same decision)
        decide = (self.thresholds.ma, self.thresholds.el) if self.config.per_epoch_el == "decide" else None
        return evaluate_memorization(model, forget, self.config, progress, label=f"epoch {epoch} · forget",
                                     thresholds=decide)

    def met(self, scores: dict[str, Any]) -> bool:
        return scores["el"] is not None and self.thresholds.forgotten(scores["ma"], scores["el"])

    def stops(self, scores: dict[str, Any]) -> bool:
        return self.config.early_stop and self.met(scores)


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
        return {**scores, "epoch_record": {"tofu": found}}

    def met(self, scores: dict[str, Any]) -> bool:
        return self.rule.met(scores)

    def stops(self, scores: dict[str, Any]) -> bool:
        return self.rule.stops(scores)


def stopping_rule(config: EvalConfig, thresholds: Thresholds, *, tokenizer: Any = None,
                  data_dir: Any = None) -> StoppingRule:
    """The rule a run's evaluation options give."""
    rule: StoppingRule = PaperCriterion(thresholds, config)
    if config.tofu is not None and config.tofu.every_epoch:
        rule = WithTofu(rule, config, tokenizer, data_dir)
    return rule
