"""Gradient ascent (Jang et al., 2023; the paper's Section 3.1): the negated LM loss on the forget set, no retain
term."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from unlearnkit.methods.base import UnlearningMethod

if TYPE_CHECKING:
    import torch


class GradientAscent(UnlearningMethod):
    description = "gradient ascent on the forget set (Jang et al., 2023)"
    uses_retain: ClassVar[bool] = False

    def forget_objective(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None,
                         normaliser: float | None) -> torch.Tensor:
        from unlearnkit.objectives import gradient_ascent_loss

        return gradient_ascent_loss(logits, labels, normaliser)


METHOD = GradientAscent
