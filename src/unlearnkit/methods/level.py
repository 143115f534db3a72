"""Forgetting down to the level of never-seen text, and no further: gradient ascent on each forget row's mean NLL
until it reaches the held-out rows' mean NLL under the model before unlearning (a squared hinge,
:func:`unlearnkit.objectives.held_out_level_loss`), plus the LM loss on the retain set.

IHL stops pushing a token once it is no longer the top prediction, which can leave a row far more likely than
text the model never saw (and recognisable by membership inference); gradient ascent never stops and pushes rows
past that level (as recognisable, the other way). This objective aims at the level itself (docs/robust.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import MethodOptions, MethodSetup, UnlearningMethod

if TYPE_CHECKING:
    import torch

    from unlearnkit.data.blocks import TokenBlocks


class LevelOptions(MethodOptions):
    margin: float = Field(0.0, description="nats added to the held-out level the forget rows are pulled to")
    level_from: Literal["before", "current"] = Field(
        "before", description="the held-out rows' NLL under the model before unlearning (measured once), or under "
                              "the model being trained, measured again at the start of every epoch (unlearning "
                              "raises it too)")


class HeldOutLevel(UnlearningMethod):
    description = "forget rows' NLL raised to the held-out rows' level and no further + LM loss on retain"
    Options: ClassVar[type[MethodOptions]] = LevelOptions
    unit: ClassVar[str] = "rows"
    options: LevelOptions

    def prepare(self, setup: MethodSetup) -> None:
        """The held-out rows' mean NLL under the model before unlearning: the level (with ``level_from: before``,
        for the whole run)."""
        super().prepare(setup)
        validation = setup.data.validation
        if validation is None:
            raise UnlearnkitError("method level pulls the forget rows to the held-out rows' level; set "
                                  "data.validation.")
        self.validation, self.eval_batch_size = validation, setup.eval_batch_size
        self.level = self.measure_level(setup.model)
        self.seen: set[int] = set()  # forget rows of this epoch so far (level_from: current)
        self.measured = False
        self.last_batch: set[int] = set()

    def measure_level(self, model: Any) -> float:
        """The held-out rows' mean NLL under ``model`` (eval mode, no gradients), plus the margin."""
        from unlearnkit.metrics.perplexity import sequence_logprobs
        from unlearnkit.objectives import predicted_tokens

        tokens = predicted_tokens(self.validation.labels()).clamp(min=1)
        row_nll = -sequence_logprobs(model, self.validation, self.eval_batch_size) / tokens
        return float(row_nll.mean()) + self.options.margin

    def forget_loss(self, model: Any, forget: TokenBlocks, rows: torch.Tensor | None,
                    normaliser: float | None) -> torch.Tensor:
        if self.options.level_from == "current" and rows is not None:
            batch = {int(row) for row in rows}
            # a row seen again opens a new epoch (not the same batch again: SAM scores a step's rows twice); the
            # first call of a run (or of a resumed one) measures too
            if not self.measured or (batch & self.seen and batch != self.last_batch):
                self.level, self.measured, self.seen = self.measure_level(model), True, set()
            self.seen |= batch
            self.last_batch = batch
        return super().forget_loss(model, forget, rows, normaliser)

    def forget_objective(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None,
                         normaliser: float | None) -> torch.Tensor:
        from unlearnkit.objectives import held_out_level_loss

        return held_out_level_loss(logits, labels, self.level, normaliser=normaliser)


METHOD = HeldOutLevel
