"""Memorising: fine-tune a model on sequences until it has memorised them (the demo's and testbeds' start).

Unlearning needs a model that has memorised its forget set. Public pretrained models that
work offline here have not memorised anything we can ship, so we fine-tune one until its
memorisation accuracy (Eq. 8) on the sequences passes a target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.metrics.memorization import memorization_accuracy
from unlearnkit.objectives import lm_loss
from unlearnkit.training import OptimisationStep


@dataclass
class MemorizeResult:
    epochs: int
    ma: float
    reached_target: bool
    history: list[float]


def memorize(
    model: torch.nn.Module,
    blocks: TokenBlocks,
    *,
    target_ma: float = 0.9,
    max_epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
    check_every: int = 1,
    on_epoch: Callable[[int, float], None] | None = None,
) -> MemorizeResult:
    """Fine-tune every parameter of ``model`` with the LM loss on ``blocks`` until MA ≥ ``target_ma``."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    step = OptimisationStep(params, lr=lr)
    history: list[float] = []
    ma = 0.0
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(len(blocks), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = blocks.subset(order[start:start + batch_size])
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            step(lm_loss(logits, batch.labels()))
        if epoch % check_every == 0 or epoch == max_epochs:
            model.eval()
            ma = float(memorization_accuracy(model, blocks.input_ids, blocks.attention_mask).mean())
            history.append(ma)
            if on_epoch is not None:
                on_epoch(epoch, ma)
            if ma >= target_ma:
                return MemorizeResult(epoch, ma, True, history)
    model.eval()
    return MemorizeResult(max_epochs, ma, False, history)
