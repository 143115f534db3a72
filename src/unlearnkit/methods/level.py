"""Forgetting down to the level of never-seen text, and no further: gradient ascent on each forget row's mean NLL
until it reaches the held-out rows' mean NLL under the model before unlearning (a squared hinge,
:func:`unlearnkit.objectives.held_out_level_loss`), plus the LM loss on the retain set.

IHL stops pushing a token once it is no longer the top prediction, which can leave a row far more likely than
text the model never saw (and recognisable by membership inference); gradient ascent never stops and pushes rows
past that level (as recognisable, the other way). This objective aims at the level itself (docs/robust.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import MethodOptions, MethodSetup, UnlearningMethod

if TYPE_CHECKING:
    import torch


class LevelOptions(MethodOptions):
    margin: float = Field(0.0, description="nats added to the held-out level the forget rows are pulled to")


class HeldOutLevel(UnlearningMethod):
    description = "forget rows' NLL raised to the held-out rows' level and no further + LM loss on retain"
    Options: ClassVar[type[MethodOptions]] = LevelOptions
    unit: ClassVar[str] = "rows"
    options: LevelOptions

    def prepare(self, setup: MethodSetup) -> None:
        """The held-out rows' mean NLL under the model before unlearning: the level, computed once."""
        from unlearnkit.metrics.perplexity import sequence_logprobs
        from unlearnkit.objectives import predicted_tokens

        super().prepare(setup)
        validation = setup.data.validation
        if validation is None:
            raise UnlearnkitError("method level pulls the forget rows to the held-out rows' level; set "
                                  "data.validation.")
        tokens = predicted_tokens(validation.labels()).clamp(min=1)
        row_nll = -sequence_logprobs(setup.model, validation, setup.eval_batch_size) / tokens
        self.level = float(row_nll.mean()) + self.options.margin

    def forget_objective(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None,
                         normaliser: float | None) -> torch.Tensor:
        from unlearnkit.objectives import held_out_level_loss

        return held_out_level_loss(logits, labels, self.level, normaliser=normaliser)


METHOD = HeldOutLevel
