"""The one optimisation step: AdamW, linear warm-up, gradient clipping and the non-finite guard.

Unlearning, memorising a demo model and training a testbed all update weights through
:class:`OptimisationStep`, with or without an ``accelerate.Accelerator`` (which adds device placement,
several processes and gradient accumulation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch


def warmup_factor(update: int, warmup_steps: int, total_steps: int | None = None) -> float:
    """Learning-rate factor of optimiser update ``update`` (0-based): rises linearly over ``warmup_steps``
    updates, ``(update + 1) / (warmup_steps + 1)``, then stays at 1 or, given ``total_steps``, falls linearly
    to 0 at update ``total_steps`` (the Trainer's "linear" schedule TOFU's fine-tuning uses)."""
    if update < warmup_steps or total_steps is None:
        return min(1.0, (update + 1) / (warmup_steps + 1))
    return max(0.0, (total_steps - update) / max(1, total_steps - warmup_steps))


class OptimisationStep:
    """Call it with a loss to take one step; it returns ``False`` (and changes nothing) for a NaN/inf loss.

    ``warmup_steps`` counts optimiser updates, i.e. after gradient accumulation; ``total_steps`` adds a linear
    decay to 0 after the warm-up. ``max_grad_norm=None``
    turns clipping off. With an ``accelerator``, call :meth:`prepare` once and take each micro-step of an
    accumulation inside :meth:`micro_step`; the caller says which micro-step ends an optimisation step
    (``update``), so a step can end early (at an epoch's end) and normalise its loss itself.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float = 0.0,
                 warmup_steps: int = 0, max_grad_norm: float | None = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), fused: bool = False,
                 total_steps: int | None = None) -> None:
        self.params = list(params)
        self.max_grad_norm = max_grad_norm
        self.accelerator: Any = None
        extra = {"fused": True} if fused else {}
        self.optimizer: Any = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay, betas=betas, **extra)
        self.scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda update: warmup_factor(update, warmup_steps, total_steps))

    def prepare(self, accelerator: Any, model: Any) -> Any:
        """Hand the model, optimiser and schedule to ``accelerator``; returns the prepared model."""
        self.accelerator = accelerator
        model, self.optimizer, self.scheduler = accelerator.prepare(model, self.optimizer, self.scheduler)
        # FSDP replaces the parameters by shards of them, and points the optimiser at those
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return model

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @contextlib.contextmanager
    def micro_step(self, model: Any, *, update: bool) -> Iterator[None]:
        """Around one micro-step's forward and backward pass: across processes the gradients are reduced only
        on the one that ends the optimisation step (``update``); the others only accumulate (DDP's no_sync).
        Under FSDP every micro-step reduce-scatters into each process's shard (FSDP2 would otherwise keep the
        unsynchronised gradients unsharded beside the parameters: a whole model's more per GPU); DeepSpeed
        accumulates by itself, told by ``sync_gradients`` where a step ends."""
        if self.accelerator is None:
            yield
            return
        from accelerate.utils import DistributedType

        self.accelerator.sync_gradients = update
        accumulates_itself = self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        with contextlib.nullcontext() if update or accumulates_itself else self.accelerator.no_sync(model):
            yield

    def __call__(self, loss: torch.Tensor, *, update: bool = True) -> bool:
        """Back-propagate ``loss``; when it ends an optimisation step (``update``), clip the gradients and update
        the weights. A NaN or infinite loss changes nothing and returns ``False``."""
        if not bool(torch.isfinite(loss)):
            return False
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()
        if not update:
            return True
        if self.max_grad_norm is not None:
            if self.accelerator is not None:
                self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
            else:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True
