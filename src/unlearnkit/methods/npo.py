"""Negative preference optimisation (Zhang et al., 2024) on the forget set plus the LM loss on the retain set:
the forget rows' sequence log-probabilities compared with the model's before unlearning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from unlearnkit.methods.base import MethodOptions, MethodSetup, UnlearningMethod

if TYPE_CHECKING:
    import torch


class NPOOptions(MethodOptions):
    # 0.1: Zhang et al. 2024, also the SimNPO authors' NPO config (Unlearn-Simple, TOFU/config/forget.yaml)
    beta: float = Field(0.1, gt=0.0, description="inverse temperature")


class NegativePreference(UnlearningMethod):
    description = "negative preference optimisation on forget (Zhang et al., 2024) + LM loss on retain"
    Options: ClassVar[type[MethodOptions]] = NPOOptions
    unit: ClassVar[str] = "rows"
    options: NPOOptions

    def prepare(self, setup: MethodSetup) -> None:
        """The forget rows' log-probabilities under the model before unlearning, computed once."""
        from unlearnkit.metrics.perplexity import sequence_logprobs

        super().prepare(setup)
        self.reference_logprob: Any = sequence_logprobs(setup.model, setup.data.forget, setup.eval_batch_size)

    def forget_objective(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None,
                         normaliser: float | None) -> torch.Tensor:
        from unlearnkit.objectives import npo_loss

        reference = self.reference_logprob[rows] if rows is not None else self.reference_logprob
        return npo_loss(logits, labels, reference, beta=self.options.beta, normaliser=normaliser)


METHOD = NegativePreference
