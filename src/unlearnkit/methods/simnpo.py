"""SimNPO (Fan et al., 2024): NPO without a reference model, length-normalised, plus the LM loss on the retain
set."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from unlearnkit.methods.base import MethodOptions, UnlearningMethod

if TYPE_CHECKING:
    import torch


class SimNPOOptions(MethodOptions):
    # beta 2.5, gamma 0: the values of Fan et al.'s TOFU experiments
    beta: float = Field(2.5, gt=0.0, description="inverse temperature")
    gamma: float = Field(0.0, description="reward margin")


class SimNPO(UnlearningMethod):
    description = "SimNPO, NPO without a reference model, length-normalised (Fan et al., 2024) + LM loss on retain"
    Options: ClassVar[type[MethodOptions]] = SimNPOOptions
    unit: ClassVar[str] = "rows"
    options: SimNPOOptions

    def forget_objective(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None,
                         normaliser: float | None) -> torch.Tensor:
        from unlearnkit.objectives import simnpo_loss

        return simnpo_loss(logits, labels, beta=self.options.beta, gamma=self.options.gamma, normaliser=normaliser)


METHOD = SimNPO
