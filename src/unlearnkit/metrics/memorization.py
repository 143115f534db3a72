"""Memorization metrics of the paper's Appendix B: memorization accuracy (MA), extraction likelihood (EL_n).

All functions take any Hugging Face causal LM (``model(input_ids=..., attention_mask=...).logits``) and
token ids ``[B, T]`` with optional right padding (``attention_mask`` 0 on padding). Padding tokens are never
part of a sequence: each row is cut to its valid length before it is scored.

Greedy decoding and EOS
-----------------------
EL_n compares greedy continuations with the text. It decodes with its own
:func:`~unlearnkit.metrics.decoding.greedy_generate` rather than ``model.generate``: it needs a different number
of new tokens per row in one batch and the logit margin of every decision (see "Exactness" below). Ties go to
``torch.argmax`` (lowest token id), and decoding continues past EOS, always exactly the number of tokens the
definition asks for. So EL_n does not depend on which token the tokenizer calls EOS, and an EOS inside a text
is an ordinary token.

Exactness of the fast EL_n
--------------------------
:func:`extraction_likelihood` returns the same greedy tokens, hence bit-identical values, as
:func:`extraction_likelihood_reference`, using the identity that the greedy continuation from prefix ``x[:i]``
is ``x_i`` followed by the continuation from ``x[:i+1]`` whenever the first greedy token equals ``x_i``.
That identity is exact in real arithmetic. In floating point the same logits computed through different tensor
shapes (a full teacher-forced pass vs. a prefill of the prefix, different batch sizes, different padding) may
differ in the last bits, which can flip an argmax only where the top two logits tie to within ~1e-6. The
functions report how close the closest call was (``min_margin`` in :func:`extraction_likelihood_details`) so a user can
see when a result rests on a near-tie. Running the model in float64 makes such flips practically impossible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearnkit.errors import UnlearnkitError
from unlearnkit.metrics.decoding import (
    context_limit,
    decode_batches,
    eval_mode,
    greedy_continue,
    greedy_generate,
    left_padded_prefix_cache,
    model_device,
)

__all__ = [
    "ELDetails",
    "extraction_likelihood",
    "extraction_likelihood_details",
    "extraction_likelihood_reference",
    "memorization_accuracy",
    "ngrams",
    "TeacherForced",
    "teacher_forced_pass",
    "overlap_n",
]


# ---------------------------------------------------------------------------------------------- helpers
def valid_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    """Valid (non-padded) length of each row; right padding is assumed, as in :class:`TokenBlocks`."""
    if input_ids.dim() != 2:
        raise UnlearnkitError(
            f"input_ids must be a [batch, tokens] tensor but has shape {tuple(input_ids.shape)}; "
            "add a batch dimension with input_ids.unsqueeze(0)."
        )
    if attention_mask is None:
        return [int(input_ids.shape[1])] * int(input_ids.shape[0])
    if attention_mask.shape != input_ids.shape:
        raise UnlearnkitError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
            f"{tuple(input_ids.shape)}; pass the mask that belongs to these ids."
        )
    return [int(v) for v in attention_mask.sum(dim=1).tolist()]


def ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """All n-grams of ``seq`` in order, with repeats (``len(seq) - n + 1`` of them, or none)."""
    return [tuple(seq[k : k + n]) for k in range(len(seq) - n + 1)]


def overlap_n(pred: Sequence[int], label: Sequence[int], n: int) -> float | None:
    """OVERLAP_n (Eq. 6): share of ``pred``'s n-grams (with repeats) found in the set of ``label``'s n-grams,
    divided by the number of n-grams of ``label`` (as in Jang et al.'s ``validation_el``).

    Returns ``None`` when ``label`` has no n-gram (fewer than ``n`` tokens): the term is undefined, skipped.
    """
    label_grams = ngrams(label, n)
    if not label_grams:
        return None
    label_set = set(label_grams)
    hits = sum(1 for gram in ngrams(pred, n) if gram in label_set)
    return hits / len(label_grams)


def _el_from_continuations(x: list[int], conts: list[list[int]], n: int, start: int = 1) -> float:
    """EL_n (Eq. 7) from the greedy continuation ``conts[i]`` of every prefix ``x[:i]``, i = start..T-1 (the
    prefixes from ``start`` on: a question-answer row's answer, its question the context of every prefix).

    Shared by the reference and the fast path so that both sum the same terms in the same order (Jang et al.
    loop i from T-1 down to 1). An n-gram of the label ``x[i:]`` is in its set iff the last place it occurs in
    ``x`` starts at or after ``i``; one dictionary of last starts serves every i.
    """
    length = len(x)
    last_start: dict[tuple[int, ...], int] = {}
    for k, gram in enumerate(ngrams(x, n)):
        last_start[gram] = k
    total = 0.0
    for i in reversed(range(start, length)):
        n_label = length - i - n + 1
        if n_label <= 0:  # the label x[i:] has fewer than n tokens: undefined term, skipped (Jang et al.)
            continue
        hits = sum(1 for gram in ngrams(conts[i], n) if last_start.get(gram, -1) >= i)
        total += hits / n_label
    return total / (length - n - start + 1)


def _check_lengths(lengths: list[int], n: int, starts: list[int] | None = None) -> None:
    if n < 1:
        raise UnlearnkitError(f"EL_n needs n >= 1 but got n={n}; use n=10 as in the paper.")
    for row, length in enumerate(lengths):
        start = starts[row] if starts is not None else 1
        if length - start < n:
            scored = "tokens" if starts is None else "scored tokens (an answer's)"
            raise UnlearnkitError(
                f"Sequence {row} has {length - start + 1} {scored}, which is shorter than n+1 = {n + 1} tokens "
                f"needed for EL_{n}; use a smaller n or longer texts."
            )


def first_scored(scored_mask: torch.Tensor | None, rows: int) -> list[int]:
    """The first prefix length each row is scored from: 1 (every prefix), or the position of the first token
    ``scored_mask`` marks (a question-answer row: the answer's first token, the question read as context)."""
    if scored_mask is None:
        return [1] * rows
    return [max(1, int(torch.nonzero(scored_mask[b]).min())) if bool(scored_mask[b].any()) else 1
            for b in range(rows)]


def _teacher_forced_argmax(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int,
    caches: list[Any] | None = None, log_probs: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """argmax_v p(v | x_<t) for every position, and the top-1 minus top-2 logit gap; one pass per batch. With
    ``caches`` (a list) the KV cache of each batch is appended to it; with ``log_probs`` (a list) each batch's
    ``log p(x_t | x_<t)`` (float64, ``[B, T-1]``)."""
    device = model_device(model)
    preds, margins = [], []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        mask = attention_mask[start : start + batch_size].to(device)
        out = model(input_ids=ids, attention_mask=mask, use_cache=caches is not None)
        if caches is not None:
            caches.append(getattr(out, "cache", None) or getattr(out, "past_key_values", None))
        logits = out.logits
        if log_probs is not None:  # a row at a time: a batch's vocabulary-sized float64 copy would not fit
            log_probs.append(torch.stack([
                row[:-1].double().gather(-1, target[:, None])[:, 0] - torch.logsumexp(row[:-1].double(), dim=-1)
                for row, target in zip(logits, ids[:, 1:], strict=True)]).cpu())
        preds.append(logits.argmax(dim=-1).cpu())
        top2 = torch.topk(logits.float(), k=min(2, logits.shape[-1]), dim=-1).values
        gap = top2[..., 0] - top2[..., -1] if top2.shape[-1] == 2 else torch.full_like(top2[..., 0], 1e9)
        margins.append(gap.cpu())
    return torch.cat(preds), torch.cat(margins)


# ------------------------------------------------------------------------------------------------- MA
def memorization_accuracy(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 32,
    scored_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Memorisation accuracy, Eq. 8 (Tirumala et al. 2022; paper Appendix B), one value per sequence:

        MA(x) = sum_{t=1}^{T-1} 1{ argmax_v p(v | x_<t) = x_t } / (T - 1)

    over the valid (non-padded) tokens of each row, from one teacher-forced pass. Returns ``float64[B]``.
    ``scored_mask`` counts only the tokens it marks (a question-answer row's answer, the question still read).
    """
    return teacher_forced_pass(model, input_ids, attention_mask, batch_size, scored_mask).ma


@dataclass(frozen=True)
class TeacherForced:
    """What one teacher-forced pass over a set gives: MA per sequence and, when asked, the log-probability of
    each scored token (what membership-inference scores are made of)."""

    ma: torch.Tensor
    log_probs: list[torch.Tensor] | None = None


def teacher_forced_pass(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        batch_size: int = 32, scored_mask: torch.Tensor | None = None,
                        with_log_probs: bool = False) -> TeacherForced:
    """:func:`memorization_accuracy`'s pass, and with ``with_log_probs`` each row's ``log p(x_t | x_<t)`` over the
    tokens MA counts, from the same logits."""
    lengths = valid_lengths(input_ids, attention_mask)
    for row, length in enumerate(lengths):
        if length < 2:
            raise UnlearnkitError(
                f"Sequence {row} has {length} token(s); MA needs at least 2 tokens, so drop empty texts."
            )
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    preds, values = _length_sorted_argmax(model, input_ids, mask, lengths, batch_size, with_log_probs)
    counted = (mask if scored_mask is None else scored_mask)[:, 1:].cpu() > 0
    hits = (preds[:, :-1] == input_ids[:, 1:].cpu()) & counted
    if scored_mask is None:
        ma = hits.sum(dim=1).double() / torch.tensor(lengths, dtype=torch.float64).sub(1)
    else:
        ma = hits.sum(dim=1).double() / counted.sum(dim=1).clamp(min=1).double()
    if values is None:
        return TeacherForced(ma)
    return TeacherForced(ma, [values[row][counted[row]] for row in range(len(values))])


def _length_sorted_argmax(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, lengths: list[int],
                          batch_size: int, with_log_probs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_teacher_forced_argmax` over rows batched by length, each batch cut to its longest row (a set of
    question-answer rows is padded to its longest, most rows far shorter), back in the rows' order: the argmax
    per position (-1 on padding) and, with ``with_log_probs``, ``log p(x_t | x_<t)`` (0 on padding)."""
    rows, width = input_ids.shape
    preds = torch.full((rows, width), -1, dtype=torch.long)
    values = torch.zeros(rows, max(width - 1, 0), dtype=torch.float64) if with_log_probs else None
    order = sorted(range(rows), key=lambda row: lengths[row])
    with eval_mode(model):
        for start in range(0, rows, batch_size):
            chosen = order[start:start + batch_size]
            cut = max(lengths[row] for row in chosen)
            batches: list[torch.Tensor] | None = [] if values is not None else None
            found, _ = _teacher_forced_argmax(model, input_ids[chosen, :cut], mask[chosen, :cut], len(chosen),
                                              log_probs=batches)
            preds[chosen, :cut] = found
            if values is not None and batches is not None:
                values[chosen, :cut - 1] = batches[0]
    return preds, values


# ----------------------------------------------------------------------------------------------- EL_n
def extraction_likelihood_reference(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    n: int = 10,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 32,
    scored_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Extraction likelihood EL_n, Eqs. 6-7 (Jang et al. 2023, ``validation_el``), the slow reference:

        OVERLAP_n(a, b) = |{c in n-grams(a) (with repeats) : c in set(n-grams(b))}| / |n-grams(b)|
        EL_n(x) = sum_{i=1}^{T-n} OVERLAP_n(f(x_<i), x_>=i) / (T - n)

    where f(x_<i) is the greedy continuation of the prefix x[:i] to the full length T (T - i new tokens).
    For every prefix length i, the prefixes of all rows still long enough are decoded together (they have
    the same length, so no padding), like Jang et al.'s loop. With ``scored_mask`` the sum runs over the prefixes
    from each row's first scored token on (:func:`first_scored`), divided by their count. Returns ``float64[B]``.
    """
    lengths = valid_lengths(input_ids, attention_mask)
    starts = first_scored(scored_mask, len(lengths))
    _check_lengths(lengths, n, starts if scored_mask is not None else None)
    rows, conts = _reference_continuations(model, input_ids, lengths, batch_size, starts)
    return torch.tensor([_el_from_continuations(rows[b], conts[b], n, starts[b]) for b in range(len(rows))],
                        dtype=torch.float64)


def _reference_continuations(
    model: torch.nn.Module, input_ids: torch.Tensor, lengths: list[int], batch_size: int,
    starts: list[int] | None = None,
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """The rows cut to their lengths, and ``conts[b][i]`` = greedy continuation of ``x_b[:i]`` to full length,
    generated afresh for every prefix (the reference's slow way)."""
    rows = [input_ids[b, : lengths[b]].tolist() for b in range(len(lengths))]
    conts: list[list[list[int]]] = [[[] for _ in range(length)] for length in lengths]
    with eval_mode(model):
        for i in reversed(range(1, max(lengths, default=0))):
            live = [b for b in range(len(rows)) if lengths[b] > i >= (starts[b] if starts else 1)]
            out, _ = greedy_generate(model, [rows[b][:i] for b in live],
                                     [lengths[b] - i for b in live], batch_size)
            for b, cont in zip(live, out, strict=True):
                conts[b][i] = cont
    return rows, conts


@dataclass
class ELDetails:
    """What :func:`extraction_likelihood_details` found, for diagnostics and benchmarks."""

    el: torch.Tensor  # float64[B], EL_n per sequence
    branches: int  # prefixes whose greedy first token departs from the text (generated afresh)
    prefixes: int  # all prefixes i = 1..T-1 over all rows
    generated_tokens: int  # tokens decoded for the branches
    min_margin: float  # smallest top-1 minus top-2 logit gap over all argmax decisions taken
    reused_cache: bool = False  # branch prefixes came from the teacher-forced pass's KV cache


def extraction_likelihood_details(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    n: int = 10,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 32,
    reuse_cache: bool = True,
    decode_rows: int | None = None,
    scored_mask: torch.Tensor | None = None,
) -> ELDetails:
    """Fast exact EL_n (Eqs. 6-7) with diagnostics; see :func:`extraction_likelihood`."""
    lengths = valid_lengths(input_ids, attention_mask)
    starts = first_scored(scored_mask, len(lengths))
    _check_lengths(lengths, n, starts if scored_mask is not None else None)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    rows = [input_ids[b, : lengths[b]].tolist() for b in range(len(lengths))]
    with eval_mode(model):
        # One teacher-forced pass gives the first greedy token of every prefix: first[b][i-1] follows x[:i],
        # and its KV cache holds every prefix's keys and values.
        caches: list[Any] | None = [] if reuse_cache else None
        first_t, margin_t = _teacher_forced_argmax(model, input_ids, mask, batch_size, caches)
        first = first_t.tolist()
        min_margin = min((float(margin_t[b, : lengths[b] - 1].min()) for b in range(len(rows))),
                         default=float("inf"))
        # A branch starts wherever the model departs from the text; only those need decoding.
        branches = [(b, i) for b in range(len(rows)) for i in range(starts[b], lengths[b])
                    if first[b][i - 1] != rows[b][i]]
        # Sorting by prompt length keeps left padding and per-batch decode lengths small.
        branches.sort(key=lambda bi: (bi[1], bi[0]))
        wanted = [lengths[b] - i - 1 for b, i in branches]
        rows_per_batch = decode_rows or _decode_rows(caches, batch_size, max(lengths, default=1))
        decoded = (_decode_from_cache(model, caches, batch_size, rows_per_batch, branches, first, wanted)
                   if caches else None)
        if decoded is not None:
            tails, gen_margin = decoded
        else:
            prompts = [rows[b][:i] + [first[b][i - 1]] for b, i in branches]
            tails, gen_margin = greedy_generate(model, prompts, wanted, batch_size)
    branch_cont = {bi: [first[bi[0]][bi[1] - 1], *tail] for bi, tail in zip(branches, tails, strict=True)}

    values = []
    for b, x in enumerate(rows):
        conts: list[list[int]] = [[] for _ in range(lengths[b] + 1)]
        # Backwards: where the first greedy token equals x_i, f(x_<i) = x_i followed by f(x_<i+1).
        for i in reversed(range(starts[b], lengths[b])):
            conts[i] = branch_cont[(b, i)] if (b, i) in branch_cont else [x[i], *conts[i + 1]]
        values.append(_el_from_continuations(x, conts, n, starts[b]))
    return ELDetails(
        el=torch.tensor(values, dtype=torch.float64),
        branches=len(branches),
        prefixes=sum(length - start for length, start in zip(lengths, starts, strict=True)),
        generated_tokens=sum(wanted),
        min_margin=min_margin,
        reused_cache=decoded is not None,
    )


#: Memory for the branches' KV caches in one decode batch (the default batch is sized to it).
DECODE_CACHE_BYTES = 1 << 30


def _decode_rows(caches: list[Any] | None, batch_size: int, longest: int) -> int:
    """Branches per decode batch: as many as :data:`DECODE_CACHE_BYTES` of KV cache holds, between
    ``batch_size`` and 4 × ``batch_size`` (wider batches span more prefix lengths, and rows that finish
    early keep decoding with the batch, so beyond that the waste outgrows the gain)."""
    layers = getattr(caches[0], "layers", None) if caches else None
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        return batch_size
    per_token = sum(2 * layer.keys.shape[1] * layer.keys.shape[-1] * layer.keys.element_size() for layer in layers)
    return max(batch_size, min(4 * batch_size, DECODE_CACHE_BYTES // max(1, per_token * longest)))


def _decode_from_cache(model: torch.nn.Module, caches: list[Any], chunk_rows: int, decode_rows: int,
                       branches: list[tuple[int, int]], first: list[list[int]],
                       wanted: list[int]) -> tuple[list[list[int]], float] | None:
    """The branches' continuations decoded from the teacher-forced pass's KV cache, batched as
    :func:`greedy_generate` batches the prompts, but with no prefix computed again. ``None`` when the
    model's cache cannot be cut exactly (see :func:`left_padded_prefix_cache`)."""
    tails: list[list[int]] = [[] for _ in branches]
    min_margin = float("inf")
    limit = context_limit(model)
    for members in decode_batches([i + 1 for _, i in branches], wanted, decode_rows, limit):
        if max(wanted[k] for k in members) <= 0:
            continue
        cache = left_padded_prefix_cache(caches, chunk_rows, [branches[k] for k in members],
                                         reserve=max(wanted[k] for k in members))
        if cache is None:
            return None
        out, margin = greedy_continue(model, cache, [branches[k][1] for k in members],
                                      [first[branches[k][0]][branches[k][1] - 1] for k in members],
                                      [wanted[k] for k in members])
        min_margin = min(min_margin, margin)
        for k, tail in zip(members, out, strict=True):
            tails[k] = tail
    return tails, min_margin


def extraction_likelihood(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    n: int = 10,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 32,
    reuse_cache: bool = True,
    scored_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Extraction likelihood EL_n, Eqs. 6-7, fast and exact: same greedy tokens as
    :func:`extraction_likelihood_reference`, hence the same values (see the module docstring on ties).

    The greedy continuation from x[:i] starts with argmax p(. | x_<i), which one teacher-forced pass gives
    for every i. Where that token is x_i, the continuation is x_i followed by the continuation from x[:i+1]
    (the same prompt). So only the prefixes where the model departs from the text ("branches") are decoded,
    batched and sorted by length; the rest is assembled backwards from i = T-1. A memorised text has few
    branches (cost ~ one forward pass). A branch's prefix is never computed again: its keys and values are
    cut from the teacher-forced pass's KV cache (``reuse_cache``; a model whose cache cannot be cut exactly
    prefills the prefixes instead), so an unmemorised text costs the branches' decoding only. ``scored_mask``: as
    for :func:`extraction_likelihood_reference`. Returns ``float64[B]``.
    """
    return extraction_likelihood_details(model, input_ids, n, attention_mask, batch_size, reuse_cache,
                                         scored_mask=scored_mask).el
