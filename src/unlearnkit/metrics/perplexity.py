"""Perplexity on general text: does the model still speak English after unlearning?

``perplexity = exp(Σ NLL / number of predicted tokens)``: the token-weighted mean negative
log-likelihood of every next token over all blocks (padding excluded), exponentiated. The
default text ships with Python itself (the ``pydoc_data.topics`` reference pages), so it works
offline and is the same everywhere for the same tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.metrics.decoding import eval_mode, model_device
from unlearnkit.objectives import IGNORE_INDEX, token_nll


def perplexity(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 8) -> float:
    """exp of the token-weighted mean next-token NLL of ``blocks`` (batched, no gradients)."""
    device = model_device(model)
    total_nll = 0.0
    total_tokens = 0
    with eval_mode(model):
        for start in range(0, len(blocks), batch_size):
            ids = blocks.input_ids[start:start + batch_size].to(device)
            mask = blocks.attention_mask[start:start + batch_size].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
            nll = token_nll(logits, labels, dtype=torch.float32)
            valid = labels[:, 1:] != IGNORE_INDEX
            total_nll += float(nll[valid].double().sum())
            total_tokens += int(valid.sum())
    if total_tokens == 0:
        raise ValueError("perplexity needs at least one block with two or more tokens")
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
