"""Unlearning objectives: pure functions of logits and labels.

Every loss takes ``logits: Tensor[B, T, V]`` and ``labels: LongTensor[B, T]`` (the input ids,
with ``-100`` where a position must be ignored) and does the causal shift itself: the logits
at position ``t`` predict the label at ``t + 1``. Each returns the mean over unmasked tokens.

:func:`token_nll` is the one shifted next-token NLL of the package: the LM loss here, the Fisher
pass, perplexity and membership inference all use it.

A *method* combines objectives on a forget batch and a retain batch; the config layer names the
methods (:data:`unlearnkit.config.METHODS`) and :data:`FORGET_OBJECTIVES` holds their forget objectives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnkit.config import METHODS
from unlearnkit.errors import unknown_name

IGNORE_INDEX = -100


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align next-token logits with their targets; return (logits, targets, mask) flattened."""
    logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    mask = targets != IGNORE_INDEX
    # Half-precision logits are upcast: the softmax over a large vocabulary needs fp32 range.
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, targets, mask


def token_nll(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "none",
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Next-token NLL ``-log p(x_t | x_<t)`` of the unmasked tokens: ``[B, T-1]`` with 0 at masked positions
    (``reduction="none"``), or their ``"sum"`` or ``"mean"``. ``dtype`` upcasts the logits first."""
    batch, length = labels.shape
    logits, targets, _ = _shift(logits, labels)
    if dtype is not None:
        logits = logits.to(dtype)
    nll = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    return nll.view(batch, length - 1) if reduction == "none" else nll


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, L_LM (Section 3.1): mean of ``-log p(x_t | x_<t)`` over unmasked tokens."""
    return token_nll(logits, labels, reduction="mean")


def gradient_ascent_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent, L_GA (Section 3.1): the negated LM loss, minimised to *raise* the LM loss."""
    return -lm_loss(logits, labels)


def inverted_hinge_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Inverted Hinge Loss, L_IHL (Section 3.3): mean over tokens of ``max(0, 1 + p(x_t) - max_{v≠x_t} p(v))``.

    Probabilities come from one log-softmax normaliser (logsumexp) evaluated only at the two
    logits that matter: the true token's and the best other token's (a top-2 over the
    logits). No second ``B×T×V`` probability tensor is built, and the gradient is the closed
    form of Appendix A.
    """
    logits, targets, mask = _shift(logits, labels)
    logits = logits[mask]
    targets = targets[mask]
    if targets.numel() == 0:
        return logits.sum() * 0.0
    log_normaliser = torch.logsumexp(logits, dim=-1)
    true_logit = logits.gather(1, targets[:, None]).squeeze(1)
    top2_values, top2_index = logits.topk(2, dim=-1)
    # The best *other* token is the top-1 unless the top-1 is the true token itself.
    best_other_logit = torch.where(top2_index[:, 0] == targets, top2_values[:, 1], top2_values[:, 0])
    p_true = torch.exp(true_logit - log_normaliser)
    p_best_other = torch.exp(best_other_logit - log_normaliser)
    return torch.clamp(1.0 + p_true - p_best_other, min=0.0).mean()


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: The forget-set objective of each method the config layer names.
FORGET_OBJECTIVES: dict[str, Objective] = {
    "ga": gradient_ascent_loss,
    "gd": gradient_ascent_loss,
    "ihl": inverted_hinge_loss,
}


@dataclass(frozen=True)
class Method:
    """An unlearning method: an objective on forget batches, optionally LM loss on retain batches."""

    name: str
    forget_objective: Objective
    uses_retain: bool
    description: str


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    spec = METHODS[name]
    return Method(spec.name, FORGET_OBJECTIVES[name], spec.uses_retain, spec.description)


def unlearning_loss(
    method: Method,
    forget_logits: torch.Tensor,
    forget_labels: torch.Tensor,
    retain_logits: torch.Tensor | None = None,
    retain_labels: torch.Tensor | None = None,
    retain_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss of one step (Eq. 5 for IHL) and its parts for logging."""
    forget_loss = method.forget_objective(forget_logits, forget_labels)
    parts = {"forget_loss": float(forget_loss.detach())}
    total = forget_loss
    if method.uses_retain:
        if retain_logits is None or retain_labels is None:
            raise ValueError(f"method {method.name} needs a retain batch")
        retain_loss = lm_loss(retain_logits, retain_labels)
        parts["retain_loss"] = float(retain_loss.detach())
        total = total + retain_weight * retain_loss
    parts["loss"] = float(total.detach())
    return total, parts
