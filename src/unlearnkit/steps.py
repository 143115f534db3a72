"""The optimisation steps of an epoch: which rows each process takes in each accumulation micro-step, and what
each micro-step's loss is divided by, so that a step's gradient is that of its whole effective batch however
its rows are split.

A step takes ``train.batch_size`` forget rows per process and micro-step, over ``train.grad_accum``
micro-steps: ``batch_size x processes x grad_accum`` rows of the epoch's shuffled order (the effective batch),
each process its consecutive share (:meth:`unlearnkit.parallel.Processes.share`). Steps never cross an epoch's
end: the last step of an epoch takes the forget rows that are left, as transformers' Trainer does, so the
criterion after each epoch sees every row's update and a checkpoint never holds a step half done.

Its retain rows (for methods with a retain term) are ``retain_batch_size x processes x grad_accum`` rows drawn
with replacement from the loop's generator, one draw per step, and dealt out the same way,
``retain_batch_size`` per process and micro-step. A short last step keeps its full retain batch: its micro-steps
beyond its forget rows carry retain rows only, so a step's retain rows, like its forget rows, do not depend on
how the step is split.

The loop cuts each micro-step's rows to the longest of them (:meth:`TokenBlocks.trimmed`): a set of rows of unequal
length (question-answer pairs, one record per line) is padded to its longest row, and a batch of shorter ones
would otherwise pay for columns that change no real token's logits.

A loss is a mean over items: tokens for the LM, GA and IHL terms, rows for NPO and SimNPO
(:attr:`unlearnkit.methods.UnlearningMethod.unit`). With rows of unequal length (one record per line of a user's
file), a per-micro-step mean would weight a token by how its rows fell on processes and micro-steps; so every
micro-step divides its summed loss by the same count, that of the whole step's items, scaled by what
accelerate undoes: it divides the loss by ``grad_accum`` and averages gradients over the processes. The
step's gradient is then that of the step's mean loss, whatever the split (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from unlearnkit.config import TrainConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.objectives import TOKENS, count_items
from unlearnkit.parallel import Processes


@dataclass(frozen=True)
class MicroStep:
    """One forward and backward pass of this process.

    ``forget_rows``/``retain_rows`` are this process's rows (indices into the forget and retain sets; ``None``
    where the pass has none: a retain-only pass of a short step, or a method without a retain term);
    ``step_rows`` the forget rows of this pass on every process. ``update``: the last pass of its step, after
    which the optimiser updates. The normalisers divide the summed forget and retain losses (module docstring);
    ``forget_weight`` is 0 for a row a process runs only to take part in a pass that left it none (every
    process must join the gradient all-reduce).
    """

    forget_rows: torch.Tensor | None
    retain_rows: torch.Tensor | None
    step_rows: torch.Tensor
    update: bool
    forget_normaliser: float
    retain_normaliser: float | None
    forget_weight: float = 1.0


def epoch_micro_steps(order: torch.Tensor, forget: TokenBlocks, retain: TokenBlocks | None, *, batch_size: int,
                      retain_batch_size: int, grad_accum: int, processes: Processes, unit: str = TOKENS,
                      generator: torch.Generator) -> Iterator[MicroStep]:
    """The micro-steps of one epoch over the forget rows in ``order``; ``retain`` is ``None`` for a method
    without a retain term. Each step's retain rows are drawn from ``generator`` when the step starts."""
    forget_chunks = list(order.split(batch_size * processes.count))
    # what accelerate divides the loss by (grad_accum) and averages the gradients over (the processes)
    undone = processes.count * grad_accum
    for start in range(0, len(forget_chunks), grad_accum):
        chunks = forget_chunks[start:start + grad_accum]
        forget_normaliser = max(sum(count_items(forget.subset(c).labels(), unit) for c in chunks), 1) / undone
        retain_chunks: list[torch.Tensor] = []
        retain_normaliser = None
        if retain is not None:
            drawn = torch.randint(len(retain), (retain_batch_size * processes.count * grad_accum,),
                                  generator=generator)
            retain_chunks = list(drawn.split(retain_batch_size * processes.count))
            retain_normaliser = max(count_items(retain.subset(drawn).labels(), TOKENS), 1) / undone
        passes = max(len(chunks), len(retain_chunks))
        for i in range(passes):
            step_rows = chunks[i] if i < len(chunks) else order[:0]
            mine: torch.Tensor | None = processes.share(step_rows) if len(step_rows) else None
            weight = 1.0
            if mine is not None and len(mine) == 0:  # fewer rows than processes: one of weight 0, to take part
                mine, weight = step_rows[:1], 0.0
            yield MicroStep(mine, processes.share(retain_chunks[i]) if i < len(retain_chunks) else None, step_rows,
                            update=i == passes - 1, forget_normaliser=forget_normaliser,
                            retain_normaliser=retain_normaliser, forget_weight=weight)


def micro_steps_in_epoch(rows: int, *, batch_size: int, grad_accum: int, processes: Processes,
                         with_retain: bool) -> int:
    """How many micro-steps :func:`epoch_micro_steps` yields for ``rows`` forget rows (for a progress bar)."""
    chunks = -(-rows // (batch_size * processes.count))
    if not with_retain:
        return chunks
    return -(-chunks // grad_accum) * grad_accum


class EpochPlan:
    """An epoch's micro-steps over ``forget`` (and ``retain`` rows, for a method with a retain term) as ``train``
    splits them on ``processes``; ``unit`` is what the forget loss is a mean over."""

    def __init__(self, forget: TokenBlocks, retain: TokenBlocks | None, train: TrainConfig, processes: Processes,
                 unit: str = TOKENS) -> None:
        self.forget, self.retain, self.train, self.processes, self.unit = forget, retain, train, processes, unit
        self.steps = micro_steps_in_epoch(len(forget), batch_size=train.batch_size, grad_accum=train.grad_accum,
                                          processes=processes, with_retain=retain is not None)

    def micro_steps(self, generator: torch.Generator) -> Iterator[MicroStep]:
        """The epoch's micro-steps, its order (and its retain rows) drawn from ``generator``."""
        order = torch.randperm(len(self.forget), generator=generator)
        return epoch_micro_steps(order, self.forget, self.retain, batch_size=self.train.batch_size,
                                 retain_batch_size=self.train.retain_batch_size or self.train.batch_size,
                                 grad_accum=self.train.grad_accum, processes=self.processes, unit=self.unit,
                                 generator=generator)
