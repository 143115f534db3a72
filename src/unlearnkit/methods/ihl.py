"""The paper's method (Eq. 5): the Inverted Hinge Loss on the forget set plus the LM loss on the retain set."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unlearnkit.methods.base import UnlearningMethod

if TYPE_CHECKING:
    import torch


class InvertedHinge(UnlearningMethod):
    description = "inverted hinge loss on forget + LM loss on retain (Eq. 5)"

    def forget_objective(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None,
                         normaliser: float | None) -> torch.Tensor:
        from unlearnkit.objectives import inverted_hinge_loss

        return inverted_hinge_loss(logits, labels, normaliser)


METHOD = InvertedHinge
