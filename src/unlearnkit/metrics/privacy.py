"""Privacy audit beyond the paper: a targeted extraction attack and membership-inference scores.

* Extraction attack of the Training Data Extraction Challenge (TDEC, Carlini et al.; SaTML 2023): each
  200-token example is 100 tokens of pre-prefix, a 50-token prefix and a 50-token suffix. The attacker feeds
  pre-prefix + prefix, decodes greedily, and succeeds when the suffix comes back exactly.
* Membership inference (does the model behave differently on the forget set than on held-out text?):
  LOSS (Yeom et al. 2018), zlib ratio (Carlini et al. 2021), Min-K% Prob (Shi et al. 2024) and Min-K%++
  (Zhang et al. 2024), summarised by the ROC AUC of members (forget set) against non-members (held-out).
  After successful unlearning the AUCs should approach 0.5.

Every score is oriented so that higher means "more likely a member".
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.metrics.decoding import eval_mode, generate_continuations, model_device
from unlearnkit.metrics.memorization import valid_lengths

__all__ = [
    "auc",
    "MIN_K_FRACTION",
    "auc_interval",
    "likelihood_scores",
    "lowest_k_mean",
    "extraction_attack",
    "extraction_layout",
    "membership_inference",
    "mia_scores",
    "token_statistics",
]

MIN_K_FRACTION = 0.2  # Min-K% Prob's k: the lowest 20 % of the token log-probabilities, as in Shi et al. 2024
TDEC_LAYOUT = (100, 50, 50)  # pre-prefix, prefix, suffix lengths of a TDEC example


# ---------------------------------------------------------------------------------- extraction attack
def extraction_attack(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    prefix_start: int = 100,
    prefix_len: int = 50,
    suffix_len: int = 50,
    context_start: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """TDEC extraction attack: greedy-decode ``suffix_len`` tokens after ``x[context_start : prefix_start +
    prefix_len]`` (pre-prefix + prefix) and compare them with the true suffix ``x[p : p + suffix_len]``,
    ``p = prefix_start + prefix_len``.

    Returns per-sequence ``exact`` (whole suffix reproduced) and ``matched_tokens`` (leading suffix tokens
    reproduced before the first error), their aggregates ``exact_match_rate`` and ``mean_matched_tokens``,
    and the layout used. Greedy decoding continues past EOS (see :mod:`unlearnkit.metrics.memorization`).
    """
    if min(prefix_len, suffix_len) < 1 or prefix_start < 0 or not 0 <= context_start <= prefix_start:
        raise UnlearnkitError(
            f"Extraction layout prefix_start={prefix_start}, prefix_len={prefix_len}, "
            f"suffix_len={suffix_len}, "
            f"context_start={context_start} is invalid; use prefix_len, suffix_len >= 1 and "
            "0 <= context_start <= prefix_start."
        )
    lengths = valid_lengths(input_ids, attention_mask)
    end = prefix_start + prefix_len + suffix_len
    short = [row for row, length in enumerate(lengths) if length < end]
    if short:
        raise UnlearnkitError(
            f"Sequence {short[0]} has {lengths[short[0]]} tokens but the extraction layout needs {end}; "
            "pass a smaller prefix_start, prefix_len or suffix_len for shorter texts."
        )
    cut = prefix_start + prefix_len
    prompts = [input_ids[b, context_start:cut].tolist() for b in range(len(lengths))]
    suffixes = [input_ids[b, cut : cut + suffix_len].tolist() for b in range(len(lengths))]
    with eval_mode(model):
        generated = generate_continuations(model, prompts, suffix_len, batch_size)
    matched = []
    for gen, true in zip(generated, suffixes, strict=True):
        k = 0
        while k < suffix_len and gen[k] == true[k]:
            k += 1
        matched.append(k)
    exact = [k == suffix_len for k in matched]
    return {
        "layout": {"context_start": context_start, "prefix_start": prefix_start, "prefix_len": prefix_len,
                   "suffix_len": suffix_len},
        "exact": exact,
        "matched_tokens": matched,
        "exact_match_rate": sum(exact) / len(exact) if exact else float("nan"),
        "mean_matched_tokens": sum(matched) / len(matched) if matched else float("nan"),
    }


# --------------------------------------------------------------------------------- membership scores
def token_statistics(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 16,
) -> list[dict[str, torch.Tensor]]:
    """Per sequence, for each predicted token x_t (t = 1..T-1, valid positions only), in float64:
    ``logp`` = log p(x_t | x_<t), ``mu`` = E_{v~p}[log p(v)] and ``sigma`` = std_{v~p}[log p(v)] of the
    model's own next-token distribution at that position (the Min-K%++ normalisers)."""
    lengths = valid_lengths(input_ids, attention_mask)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    device = model_device(model)
    out: list[dict[str, torch.Tensor]] = []
    with eval_mode(model):
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            logits = model(input_ids=ids, attention_mask=mask[start : start + batch_size].to(device)).logits
            # float64 so that sigma^2 = E[(log p)^2] - mu^2 does not cancel badly on peaked distributions.
            logprobs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
            probs = logprobs.exp()
            mu = (probs * logprobs).sum(-1)
            sigma = ((probs * logprobs.square()).sum(-1) - mu.square()).clamp(min=0).sqrt()
            token_lp = logprobs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            for j in range(ids.shape[0]):
                m = lengths[start + j] - 1
                out.append({"logp": token_lp[j, :m].cpu(), "mu": mu[j, :m].cpu(),
                            "sigma": sigma[j, :m].cpu()})
    return out


def lowest_k_mean(values: torch.Tensor, k: float) -> float:
    """Mean of the lowest ``int(len * k)`` values (at least one), as in the Min-K% reference code."""
    count = max(1, int(values.numel() * k))
    return float(torch.sort(values).values[:count].mean())


def mia_scores(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    texts: Sequence[str] | None = None,
    tokenizer: Any = None,
    k: float = 0.2,
    batch_size: int = 16,
) -> dict[str, list[float]]:
    """Membership-inference scores per sequence, each oriented so that higher = more likely a member:

    * ``loss``: -(1/(T-1)) sum_t -log p(x_t | x_<t), the negated mean token NLL (Yeom et al. 2018).
    * ``zlib``: -(mean NLL) / zlib(text), zlib = byte length of the zlib-compressed UTF-8 text (Carlini et al.
      2021 divide the log-perplexity by the zlib entropy; Shi et al.'s code uses this same mean-NLL ratio).
      Only when ``texts`` or a ``tokenizer`` to decode the ids is given.
    * ``min_k``: Min-K% Prob, mean of the lowest k% of log p(x_t | x_<t) (Shi et al. 2024).
    * ``min_k_pp``: Min-K%++, mean of the lowest k% of (log p(x_t | x_<t) - mu_t) / sigma_t with
      mu_t = sum_v p(v|x_<t) log p(v|x_<t), sigma_t^2 = sum_v p(v|x_<t) (log p(v|x_<t))^2 - mu_t^2
      (Zhang et al. 2024).
    """
    if not 0 < k <= 1:
        raise UnlearnkitError(f"Min-K% needs 0 < k <= 1 but got k={k}; use k=0.2 as in Shi et al.")
    stats = token_statistics(model, input_ids, attention_mask, batch_size)
    if any(s["logp"].numel() == 0 for s in stats):
        raise UnlearnkitError("A sequence has fewer than 2 tokens; drop empty texts before scoring them.")
    if texts is None and tokenizer is not None:
        lengths = valid_lengths(input_ids, attention_mask)
        texts = [tokenizer.decode(input_ids[b, : lengths[b]].tolist()) for b in range(len(lengths))]
    if texts is not None and len(texts) != len(stats):
        raise UnlearnkitError(f"Got {len(texts)} texts for {len(stats)} sequences; pass one text per row.")
    scores: dict[str, list[float]] = {**likelihood_scores([s["logp"] for s in stats], k), "min_k_pp": []}
    for s in stats:
        # A point-mass distribution has sigma = 0; its standardised score is 0 rather than inf/nan.
        z = torch.where(s["sigma"] > 0, (s["logp"] - s["mu"]) / s["sigma"].clamp(min=1e-300),
                        torch.zeros_like(s["logp"]))
        scores["min_k_pp"].append(lowest_k_mean(z, k))
    if texts is not None:
        scores["zlib"] = [
            loss / max(1, len(zlib.compress(text.encode("utf-8"))))
            for loss, text in zip(scores["loss"], texts, strict=True)
        ]
    return scores


def likelihood_scores(log_probs: Sequence[torch.Tensor], k: float = MIN_K_FRACTION) -> dict[str, list[float]]:
    """The two membership scores made of a sequence's token log-probabilities alone, higher = more likely a
    member: ``loss`` (their mean, the negated mean NLL) and ``min_k`` (Min-K% Prob, the mean of the lowest k)."""
    return {"loss": [float(values.mean()) for values in log_probs],
            "min_k": [lowest_k_mean(values, k) for values in log_probs]}


def auc_interval(member_scores: Sequence[float], nonmember_scores: Sequence[float], resamples: int = 1000,
                 confidence: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`auc`, members and non-members resampled apart with replacement
    (``resamples = 0``: the point estimate twice)."""
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if resamples <= 0 or pos.size == 0 or neg.size == 0:
        value = auc(member_scores, nonmember_scores)
        return value, value
    # P(member > non-member) + 0.5 P(equal) of every pair; a resample averages its rows' and columns' pairs
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, pos.size, size=(resamples, pos.size))
    columns = rng.integers(0, neg.size, size=(resamples, neg.size))
    values = np.array([pairs[r][:, c].mean() for r, c in zip(rows, columns, strict=True)])
    tail = (1 - confidence) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def auc(member_scores: Sequence[float] | torch.Tensor,
        nonmember_scores: Sequence[float] | torch.Tensor) -> float:
    """ROC AUC = P(member score > non-member score) + 0.5 P(equal): the Mann-Whitney U statistic / (n1 n0),
    from average ranks (ties get the mean of their ranks)."""
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    uniq, inverse, counts = np.unique(allv, return_inverse=True, return_counts=True)
    # Rank of a tied block = mean of the ordinal ranks it spans: start + (count + 1) / 2.
    starts = np.cumsum(counts) - counts
    avg_rank = starts + (counts + 1) / 2.0
    rank_sum = avg_rank[inverse[: pos.size]].sum()
    u = rank_sum - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def membership_inference(
    model: torch.nn.Module,
    forget_blocks: TokenBlocks,
    holdout_blocks: TokenBlocks,
    tokenizer: Any = None,
    k: float = 0.2,
    batch_size: int = 16,
) -> dict[str, Any]:
    """AUC of each membership score with the forget set as members and the held-out set as non-members
    (0.5 = indistinguishable, 1.0 = the forget set is perfectly identified)."""
    member = mia_scores(model, forget_blocks.input_ids, forget_blocks.attention_mask,
                        tokenizer=tokenizer, k=k, batch_size=batch_size)
    nonmember = mia_scores(model, holdout_blocks.input_ids, holdout_blocks.attention_mask,
                           tokenizer=tokenizer, k=k, batch_size=batch_size)
    names = [name for name in member if name in nonmember]
    return {
        "auc": {name: auc(member[name], nonmember[name]) for name in names},
        "mean_member": {name: float(np.mean(member[name])) for name in names},
        "mean_nonmember": {name: float(np.mean(nonmember[name])) for name in names},
        "n_members": len(forget_blocks),
        "n_nonmembers": len(holdout_blocks),
        "k": k,
    }


# ------------------------------------------------------------------------------------------- audit
def extraction_layout(length: int) -> dict[str, Any] | None:
    """The TDEC layout (100/50/50) when sequences have >= 200 tokens, else the same 2:1:1 proportions scaled
    to ``length``; ``None`` when sequences are too short (< 4 tokens) for any attack."""
    if length >= sum(TDEC_LAYOUT):
        start, plen, slen = TDEC_LAYOUT
        return {"prefix_start": start, "prefix_len": plen, "suffix_len": slen, "scaled": False}
    if length < 4:
        return None
    start, plen = length // 2, length // 4
    return {"prefix_start": start, "prefix_len": plen, "suffix_len": length - start - plen, "scaled": True,
            "note": f"sequences have {length} < 200 tokens, so the 100/50/50 TDEC layout was scaled to them"}
