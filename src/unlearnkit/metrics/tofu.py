"""TOFU's scores of question-answer rows, as its code computes them (locuslab/tofu ``evaluate_util.py``).

The probability of an answer is length-normalised: ``exp(-mean NLL of its scored tokens)`` (``get_batch_loss``
summed over the answer, divided by the number of answer tokens, then ``exp(-·)``).
"""

from __future__ import annotations

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.metrics.decoding import eval_mode
from unlearnkit.objectives import token_nll


def answer_nll_sums(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 16) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """Per row: the summed NLL of its scored tokens (float64) and how many there are."""
    sums, counts = [], []
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(blocks), batch_size):
            batch = trim_padding(blocks.subset(list(range(start, min(start + batch_size, len(blocks))))))
            logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
            nll = token_nll(logits, batch.labels().to(device), dtype=torch.float64)
            sums.append(nll.sum(dim=1).cpu())
            counts.append((batch.labels()[:, 1:] != -100).sum(dim=1))
    return torch.cat(sums), torch.cat(counts)


def answer_probabilities(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 16) -> torch.Tensor:
    """TOFU's per-row probability of the answer: ``exp(-(summed answer NLL) / (answer tokens))``."""
    sums, counts = answer_nll_sums(model, blocks, batch_size)
    return torch.exp(-sums / counts.clamp(min=1))


def trim_padding(blocks: TokenBlocks) -> TokenBlocks:
    """``blocks`` without the padding columns every row has (a batch padded to a longer set's length)."""
    length = int(blocks.attention_mask.sum(dim=1).max()) if len(blocks) else 0
    if length >= blocks.seq_len:
        return blocks
    loss_mask = None if blocks.loss_mask is None else blocks.loss_mask[:, :length]
    return TokenBlocks(blocks.input_ids[:, :length], blocks.attention_mask[:, :length], blocks.name, blocks.ids,
                       blocks.retokenized, loss_mask)
