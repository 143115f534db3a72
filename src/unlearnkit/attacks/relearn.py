"""The relearning attacks: a few fine-tuning steps on part of the forget set (every weight, or a LoRA adapter), or
on unrelated text, then the forget rows not trained on measured again.

Forgetting can be shallow: a handful of steps on related text brings knowledge back (Hu et al., ICLR 2025;
Łucki et al., 2024). The attacker knows some of the deleted rows (``attack`` rows) and fine-tunes on them
with the LM loss; the rows it never saw (``measured`` rows) show whether the model relearns what it was made
to forget, or only what it was shown again. The split is by rows, disjoint and seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.objectives import lm_loss
from unlearnkit.training import OptimisationStep


@dataclass(frozen=True)
class RelearnSplit:
    """Forget rows the attacker fine-tunes on, and the disjoint rest that is measured."""

    attack: TokenBlocks
    measured: TokenBlocks
    attack_rows: list[int]
    measured_rows: list[int]


def split_forget_rows(forget: TokenBlocks, fraction: float = 0.5, seed: int = 0) -> RelearnSplit:
    """A seeded random ``fraction`` of the rows for the attack (at least one), the others measured."""
    if not 0.0 < fraction < 1.0 or len(forget) < 2:
        raise ValueError("the relearning attack needs at least 2 forget rows and a fraction between 0 and 1")
    order = torch.randperm(len(forget), generator=torch.Generator().manual_seed(seed)).tolist()
    count = min(len(forget) - 1, max(1, round(fraction * len(forget))))
    attack, measured = sorted(order[:count]), sorted(order[count:])
    return RelearnSplit(forget.subset(attack), forget.subset(measured), attack, measured)


def relearn(model: torch.nn.Module, rows: TokenBlocks, *, steps: int = 20, lr: float = 1e-4, batch_size: int = 8,
            seed: int = 0, params: list[torch.nn.Parameter] | None = None) -> list[float]:
    """Fine-tune ``params`` (default: every weight) of ``model`` in place with the LM loss on ``rows`` for
    ``steps`` steps of ``batch_size`` rows (cycling through a seeded shuffle; AdamW, no warm-up); returns each
    step's loss."""
    device = next(model.parameters()).device
    params = list(model.parameters()) if params is None else params
    for param in params:
        param.requires_grad_(True)
    step = OptimisationStep(params, lr=lr, weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(rows), generator=generator).tolist()
        batch = rows.subset(order[:batch_size]).trimmed()
        order = order[batch_size:]
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        loss = lm_loss(logits, batch.labels().to(device))
        if not step(loss):
            raise FloatingPointError("the relearning loss became NaN or infinite; lower --relearn-lr")
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def recovery_fraction(original: float | None, unlearned: float | None, attacked: float | None) -> float | None:
    """``(attacked - unlearned) / (original - unlearned)``: 0 when the attack brought nothing back, 1 when it
    brought the model back to where it was before unlearning; ``None`` when undefined (no gap to recover)."""
    if original is None or unlearned is None or attacked is None or abs(original - unlearned) < 1e-12:
        return None
    return (attacked - unlearned) / (original - unlearned)


def lora_relearn(model: torch.nn.Module, rows: TokenBlocks, *, rank: int = 8, steps: int = 20, lr: float = 1e-3,
                 batch_size: int = 8, seed: int = 0) -> tuple[torch.nn.Module, list[float]]:
    """The cheaper attacker: a LoRA adapter (PEFT; rank ``rank``, alpha 2·rank, on every linear layer but the
    output head) trained on ``rows`` as :func:`relearn` trains, then merged. ``model`` becomes the base of the
    returned model (pass a copy); returns it and each step's loss."""
    from peft import LoraConfig, get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    torch.manual_seed(seed)  # the adapter's A initialisation
    adapted = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                               target_modules="all-linear"))
    trained = [param for name, param in adapted.named_parameters() if "lora_" in name]
    losses = relearn(adapted, rows, steps=steps, lr=lr, batch_size=batch_size, seed=seed, params=trained)
    return adapted.merge_and_unload().eval(), losses
