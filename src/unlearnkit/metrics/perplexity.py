"""Perplexity: does the model still speak English after unlearning? The one perplexity of the package.

``perplexity = exp(Σ NLL / number of predicted tokens)``: the token-weighted mean negative
log-likelihood of every scored next token (padding excluded), exponentiated, over fixed blocks
(:func:`perplexity`) or whole documents with a sliding window (:func:`document_perplexity`, the Pile
and WikiText columns of the paper's Table 1). Both sum through one function. :func:`general_text` is
text that ships with Python itself (the ``pydoc_data.topics`` pages), the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.metrics.decoding import context_limit, eval_mode, model_device
from unlearnkit.objectives import IGNORE_INDEX, sequence_logprob, token_nll


def perplexity(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 8) -> float:
    """exp of the token-weighted mean next-token NLL of ``blocks`` (batched, no gradients)."""
    labels = blocks.labels()  # every real token, or the scored ones (a question-answer row's answer)
    total_nll, total_tokens = _nll_sum(model, blocks.input_ids, blocks.attention_mask, labels, batch_size)
    if total_tokens == 0:
        raise ValueError("perplexity needs at least one block with two or more tokens")
    return _exp_mean(total_nll, total_tokens)


def document_perplexity(model: torch.nn.Module, tokenizer: Any, documents: Sequence[str], *,
                        window: int | None = None, stride: int | None = None, batch_size: int = 8,
                        ) -> dict[str, float | int]:
    """Perplexity of whole documents, token-weighted over all of them, each document on its own (no context
    crosses a document boundary, no BOS added: its first token is context only).

    A document longer than ``window`` tokens is scored by a strided sliding window (the usual evaluation of
    fixed-context models): windows start every ``stride`` tokens and each scores only the tokens the previous
    window did not, with the rest of the window as context, so every token but the first is scored once.
    Defaults: ``window`` = the model's context (its position table) capped at 1024, ``stride`` = half the
    window. A document that fits one window is scored exactly as :func:`perplexity` scores a block.
    """
    window = window or default_window(model)
    stride = stride or max(1, window // 2)
    if not 1 <= stride < window:
        # windows must overlap: a window's first token is context only, so the previous one must score it
        raise ValueError(f"stride must be at least 1 and below the window ({window}), not {stride}")
    rows: list[tuple[list[int], int]] = []  # (window tokens, how many of them are context only)
    for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        scored_until = 0
        for begin in range(0, max(1, len(ids) - 1), stride):
            end = min(begin + window, len(ids))
            if end - begin < 2 or end <= scored_until:
                break
            rows.append((ids[begin:end], max(1, scored_until - begin)))
            scored_until = end
            if end == len(ids):
                break
    total_nll = 0.0
    total_tokens = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(r) for r, _ in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for j, (ids, context) in enumerate(chunk):
            input_ids[j, :len(ids)] = torch.tensor(ids)
            mask[j, :len(ids)] = 1
            labels[j, context:len(ids)] = torch.tensor(ids[context:])
        nll, tokens = _nll_sum(model, input_ids, mask, labels, len(chunk))
        total_nll += nll
        total_tokens += tokens
    if total_tokens == 0:
        raise ValueError("document perplexity needs at least one document with two or more tokens")
    return {"perplexity": _exp_mean(total_nll, total_tokens), "tokens": total_tokens, "documents": len(documents),
            "window": window, "stride": stride}


def default_window(model: torch.nn.Module) -> int:
    """The document window when none is given: the model's context (its position table), at most 1024 tokens."""
    return min(1024, context_limit(model) or 1024)


def _nll_sum(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
             batch_size: int) -> tuple[float, int]:
    """Summed next-token NLL (float64) of the labelled positions, and how many there are; batched, no grads."""
    device = model_device(model)
    total_nll = 0.0
    total_tokens = 0
    with eval_mode(model):
        for start in range(0, len(input_ids), batch_size):
            ids = input_ids[start:start + batch_size].to(device)
            mask = attention_mask[start:start + batch_size].to(device)
            batch_labels = labels[start:start + batch_size].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            nll = token_nll(logits, batch_labels, dtype=torch.float32)
            valid = batch_labels[:, 1:] != IGNORE_INDEX
            total_nll += float(nll[valid].double().sum())
            total_tokens += int(valid.sum())
    return total_nll, total_tokens


def _exp_mean(total_nll: float, total_tokens: int) -> float:
    return float(torch.tensor(total_nll / total_tokens, dtype=torch.float64).exp())


def general_text() -> str:
    """General English text that ships with Python: the pydoc reference topics, in a fixed (sorted) order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def general_text_blocks(tokenizer: Any, tokens: int = 2048, seq_len: int = 256, skip_chars: int = 20_000,
                        ) -> TokenBlocks:
    """A fixed slice of :func:`general_text`: ``tokens`` tokens after the first ``skip_chars`` characters,
    cut into ``tokens // seq_len`` blocks of ``seq_len`` (the same slice every time for one tokenizer)."""
    if tokens < seq_len:
        raise ValueError(f"tokens ({tokens}) must be at least seq_len ({seq_len})")
    text = general_text()
    # Tokenise a generous character window only: the whole text is ~1 MB.
    window = text[skip_chars: skip_chars + tokens * 8]
    ids = tokenizer(window, add_special_tokens=False)["input_ids"]
    count = len(ids) // seq_len if len(ids) < tokens else tokens // seq_len
    rows = [ids[i * seq_len:(i + 1) * seq_len] for i in range(count)]
    return TokenBlocks.from_lists(rows, "pydoc_data.topics", pad_id=0, seq_len=seq_len)


def sequence_logprobs(model: Any, blocks: TokenBlocks, batch_size: int) -> torch.Tensor:
    """``log π(y | x)`` of every row of ``blocks`` under ``model`` (eval mode, no dropout), on the CPU, ``[N]``:
    what NPO compares the unlearning model with."""
    device, values = model_device(model), []
    with eval_mode(model):
        for start in range(0, len(blocks), batch_size):
            part = blocks.subset(list(range(start, min(start + batch_size, len(blocks)))))
            logits = model(input_ids=part.input_ids.to(device), attention_mask=part.attention_mask.to(device)).logits
            logprob = sequence_logprob(logits, part.labels().to(device))
            values.append(logprob.to(torch.promote_types(logprob.dtype, torch.float32)).cpu())  # float64 kept
    return torch.cat(values)
