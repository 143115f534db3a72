"""Fixed-length token blocks: the unit every objective and metric consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TokenBlocks:
    """A set of token sequences of equal length.

    ``input_ids`` is ``LongTensor[N, T]``; ``attention_mask`` is ``LongTensor[N, T]`` with 0 on
    right padding (sequences shorter than T). ``name`` says where the blocks came from and
    ``ids`` identifies each row in its source (e.g. TDEC ``doc_id``) so reports can name them.
    ``retokenized`` is True when the rows were given as another tokenizer's ids (TDEC's GPT-2 ids)
    and were decoded and re-tokenised for this model, so they are not the benchmark's exact tokens.
    ``loss_mask`` (``LongTensor[N, T]`` or None) marks the tokens a loss or a score counts, where that is
    not every real token: a question-answer row scores its answer only, never the question before it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    name: str
    ids: list[str] = field(default_factory=list)
    retokenized: bool = False
    loss_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.input_ids.shape != self.attention_mask.shape or self.input_ids.dim() != 2:
            raise ValueError("input_ids and attention_mask must both be [N, T]")
        if self.loss_mask is not None and self.loss_mask.shape != self.input_ids.shape:
            raise ValueError("loss_mask must be [N, T] like input_ids")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def scored_mask(self) -> torch.Tensor:
        """The tokens a loss or score counts: ``loss_mask`` where given, else every real token."""
        return self.attention_mask if self.loss_mask is None else self.loss_mask

    def labels(self) -> torch.Tensor:
        """Labels for a causal-LM loss: the input ids with every token not scored (padding, a question) set to
        -100."""
        return self.input_ids.masked_fill(self.scored_mask == 0, -100)

    def subset(self, rows: list[int] | torch.Tensor) -> TokenBlocks:
        index = torch.as_tensor(rows, dtype=torch.long)
        ids = [self.ids[i] for i in index.tolist()] if self.ids else []
        loss_mask = None if self.loss_mask is None else self.loss_mask[index]
        return TokenBlocks(
            self.input_ids[index], self.attention_mask[index], self.name, ids, self.retokenized, loss_mask
        )

    def trimmed(self) -> TokenBlocks:
        """These rows without the padding columns all of them end with (a batch of short rows from a set padded
        to its longest row). Padding is on the right and the models are causal, so no real token's logits
        depend on those columns: only the cost does."""
        length = int(self.attention_mask.sum(dim=1).max()) if len(self) else 0
        if length >= self.seq_len:
            return self
        loss_mask = None if self.loss_mask is None else self.loss_mask[:, :length]
        return TokenBlocks(self.input_ids[:, :length], self.attention_mask[:, :length], self.name, self.ids,
                           self.retokenized, loss_mask)

    @classmethod
    def from_lists(cls, rows: list[list[int]], name: str, pad_id: int = 0,
                   ids: list[str] | None = None, seq_len: int | None = None) -> TokenBlocks:
        """Right-pad (or cut) token lists to ``seq_len`` (default: the longest row)."""
        length = seq_len if seq_len is not None else max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            row = row[:length]
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return cls(input_ids, mask, name, list(ids) if ids else [])
