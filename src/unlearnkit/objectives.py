"""Unlearning objectives: pure functions of logits and labels.

Every loss takes ``logits: Tensor[B, T, V]`` and ``labels: LongTensor[B, T]`` (the input ids,
with ``-100`` where a position must be ignored) and does the causal shift itself: the logits
at position ``t`` predict the label at ``t + 1``. Each returns a mean over its *items*: the unmasked
tokens (LM, GA, IHL, KL: token means, as in Jang et al. and the paper's Eq. 5) or the rows (NPO, SimNPO:
sequence-level objectives, as their authors define them). ``normaliser`` replaces the batch's own count of
items: the loop passes the count of the whole optimisation step (every process and accumulation
micro-step, :mod:`unlearnkit.steps`), so that a step's gradient does not depend on how its rows were split.

:func:`token_nll` is the one shifted next-token NLL of the package: the LM loss here, the Fisher
pass, perplexity and membership inference all use it.

A *method* (:mod:`unlearnkit.methods`, one module each) combines these on a forget batch and a retain batch:
GA, IHL (the paper's), NPO and SimNPO (today's standard baselines). The retain term is the LM loss (the
paper's) or the KL divergence from the model before unlearning.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align next-token logits with their targets; return (logits, targets, mask) flattened over ``B×T``.

    The targets are shifted rather than the logits: ``logits.view(B*T, V)`` is free, while slicing off the
    last position first would copy the whole ``B×T×V`` tensor. Each row's last position gets the ignore
    index (it predicts nothing), so it is masked like padding.
    """
    vocab = logits.shape[-1]
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1).reshape(-1)
    flat = logits.reshape(-1, vocab)
    # Half-precision logits are upcast: the softmax over a large vocabulary needs fp32 range.
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return flat, targets, targets != IGNORE_INDEX


def token_nll(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "none",
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Next-token NLL ``-log p(x_t | x_<t)`` of the unmasked tokens: ``[B, T-1]`` with 0 at masked positions
    (``reduction="none"``), or their ``"sum"`` or ``"mean"``. ``dtype`` upcasts the logits first."""
    batch, length = labels.shape
    logits, targets, _ = _shift(logits, labels)
    if dtype is not None:
        logits = logits.to(dtype)
    nll = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction=reduction)
    return nll.view(batch, length)[:, :-1] if reduction == "none" else nll


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, normaliser: float | None = None) -> torch.Tensor:
    """Next-token cross-entropy, L_LM (Section 3.1): mean of ``-log p(x_t | x_<t)`` over unmasked tokens
    (their sum divided by ``normaliser`` when given)."""
    if normaliser is None:
        return token_nll(logits, labels, reduction="mean")
    return token_nll(logits, labels, reduction="sum") / normaliser


def gradient_ascent_loss(logits: torch.Tensor, labels: torch.Tensor, normaliser: float | None = None) -> torch.Tensor:
    """Gradient ascent, L_GA (Section 3.1): the negated LM loss, minimised to *raise* the LM loss."""
    return -lm_loss(logits, labels, normaliser)


def inverted_hinge_loss(logits: torch.Tensor, labels: torch.Tensor, normaliser: float | None = None) -> torch.Tensor:
    """Inverted Hinge Loss, L_IHL (Section 3.3): mean over tokens of ``max(0, 1 + p(x_t) - max_{v≠x_t} p(v))``
    (their sum divided by ``normaliser`` when given).

    Probabilities come from one log-softmax normaliser (logsumexp) evaluated only at the two
    logits that matter: the true token's and the best other token's (a top-2 over the
    logits). The backward pass is the closed form of Appendix A (:class:`_InvertedHinge`): one ``B×T×V``
    tensor (the softmax, scaled) plus two scatters, where autograd would build three.
    """
    logits, targets, mask = _shift(logits, labels)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    loss: torch.Tensor = _InvertedHinge.apply(logits, targets, mask, normaliser)
    return loss


class _InvertedHinge(torch.autograd.Function):
    """Mean IHL over the masked rows of ``logits [N, V]`` (or their sum over ``normaliser``) with the gradient of
    Appendix A:

    ∂/∂z [p_t − p_o] = p_t (e_t − softmax(z)) − p_o (e_o − softmax(z)) on tokens where the hinge is active
    (``o`` the best other token), 0 elsewhere.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                normaliser: float | None) -> torch.Tensor:
        # Every position is computed (masked ones too, then weighted 0): selecting the unmasked rows first
        # would copy the N×V logits.
        safe_targets = targets.clamp(min=0)
        log_normaliser = torch.logsumexp(logits, dim=-1)
        true_logit = logits.gather(1, safe_targets[:, None]).squeeze(1)
        top2_values, top2_index = logits.topk(2, dim=-1)
        # The best *other* token is the top-1 unless the top-1 is the true token itself.
        true_is_top = top2_index[:, 0] == safe_targets
        other_logit = torch.where(true_is_top, top2_values[:, 1], top2_values[:, 0])
        other_index = torch.where(true_is_top, top2_index[:, 1], top2_index[:, 0])
        p_true = torch.exp(true_logit - log_normaliser)
        p_other = torch.exp(other_logit - log_normaliser)
        hinge = 1.0 + p_true - p_other
        weights = mask.to(hinge.dtype) / (mask.sum() if normaliser is None else normaliser)
        # d loss / d hinge per token: its weight where the hinge is active (max(0, ·) passes it), else 0
        coefficient = weights * (hinge > 0).to(hinge.dtype)
        ctx.save_for_backward(logits, log_normaliser, p_true, p_other, safe_targets, other_index, coefficient)
        return (hinge.clamp(min=0.0) * weights).sum()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, log_normaliser, p_true, p_other, targets, other_index, coefficient = ctx.saved_tensors
        scale = grad_output * coefficient
        grad = torch.exp(logits - log_normaliser[:, None])  # the softmax, the one full-size tensor
        grad.mul_((scale * (p_other - p_true))[:, None])
        grad.scatter_add_(1, targets[:, None], (scale * p_true)[:, None])
        grad.scatter_add_(1, other_index[:, None], (-scale * p_other)[:, None])
        return grad, None, None, None


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log π(y | x)`` of each row: the sum of its unmasked tokens' next-token log-probabilities, ``[B]``."""
    return -token_nll(logits, labels).sum(dim=1)


def predicted_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many tokens of each row are predicted (unmasked, after the first), ``[B]``: the ``|y|`` of SimNPO."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


#: What each objective's mean is over: ``"tokens"`` (the predicted tokens, :func:`predicted_tokens`) or ``"rows"``.
TOKENS, ROWS = "tokens", "rows"


def count_items(labels: torch.Tensor, unit: str) -> int:
    """How many items of ``unit`` (:data:`TOKENS` or :data:`ROWS`) the rows ``labels`` hold: what a mean over
    them divides by."""
    return int(predicted_tokens(labels).sum()) if unit == TOKENS else int(labels.shape[0])


def _row_mean(values: torch.Tensor, normaliser: float | None) -> torch.Tensor:
    return values.mean() if normaliser is None else values.sum() / normaliser


def npo_loss(logits: torch.Tensor, labels: torch.Tensor, reference_logprob: torch.Tensor | None,
             beta: float = 0.1, normaliser: float | None = None) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al., 2024): ``-(2/β) mean log σ(-β (log π_θ(y|x) - log
    π_ref(y|x)))`` over the forget rows, with sequence log-probabilities (:func:`sequence_logprob`) and
    ``reference_logprob`` those of the model before unlearning. Equal models give ``(2/β) log 2``."""
    if reference_logprob is None:
        raise ValueError("NPO needs the forget rows' log-probabilities under the model before unlearning")
    current = sequence_logprob(logits, labels)
    ratio = current - reference_logprob.to(current.device, current.dtype)
    return -(2.0 / beta) * _row_mean(F.logsigmoid(-beta * ratio), normaliser)


def simnpo_loss(logits: torch.Tensor, labels: torch.Tensor, reference_logprob: torch.Tensor | None = None,
                beta: float = 2.5, gamma: float = 0.0, normaliser: float | None = None) -> torch.Tensor:
    """SimNPO (Fan et al., 2024): ``-(2/β) mean log σ(-(β/|y|) log π_θ(y|x) - γ)``: NPO without a reference
    model, the sequence log-probability divided by its length."""
    average = sequence_logprob(logits, labels) / predicted_tokens(labels).clamp(min=1)
    return -(2.0 / beta) * _row_mean(F.logsigmoid(-beta * average - gamma), normaliser)


def held_out_level_loss(logits: torch.Tensor, labels: torch.Tensor, level: float,
                        normaliser: float | None = None) -> torch.Tensor:
    """Forgetting down to never-seen text and no further: ``mean_i ½ max(0, level − ℓ_i)²`` over the forget rows,
    ``ℓ_i`` a row's mean token NLL and ``level`` the held-out rows' mean NLL under the model before unlearning.
    Its gradient ``−(level − ℓ_i) ∇ℓ_i`` is gradient ascent on a row, weighted by how far the row still is
    below the level, and 0 once it has reached it: a row is neither left recognisable nor pushed past text the
    model never saw."""
    mean_nll = -sequence_logprob(logits, labels) / predicted_tokens(labels).clamp(min=1)
    return _row_mean(0.5 * F.relu(level - mean_nll).square(), normaliser)


def kl_from_reference(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor,
                      normaliser: float | None = None) -> torch.Tensor:
    """``KL(p_ref ‖ p_θ)`` of the next-token distributions, mean over the unmasked positions (their sum over
    ``normaliser`` when given): the retain term that keeps the model's distribution where it was
    (``method.retain_kind: kl``); 0 for an unchanged model."""
    log_p, _, mask = _shift(logits, labels)
    log_ref, _, _ = _shift(reference_logits, labels)
    log_p, log_ref = F.log_softmax(log_p, dim=-1), F.log_softmax(log_ref.detach(), dim=-1)
    per_position = F.kl_div(log_p, log_ref, log_target=True, reduction="none").sum(dim=-1)
    return (per_position * mask).sum() / (mask.sum().clamp(min=1) if normaliser is None else normaliser)
