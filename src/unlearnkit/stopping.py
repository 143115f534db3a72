"""The stopping rule: what the loop asks after each epoch — the scores the rule needs, "is forgetting met?",
"does the run stop?" — and before training, "is there anything to forget?".

The paper's rule (Appendix B) is :class:`PaperCriterion`: forget-set mean MA and EL_n at or below the held-out
set's. A benchmark with another rule supplies its own :class:`StoppingRule`; the loop does not change.
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


def stopping_rule(config: EvalConfig, thresholds: Thresholds) -> StoppingRule:
    """The rule a run's evaluation options give."""
    return PaperCriterion(thresholds, config)
