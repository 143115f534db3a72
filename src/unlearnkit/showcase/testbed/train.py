"""Training a testbed from scratch: the model, the kept-vocabulary loss and MA, and the trainer.

**The vocabulary trick.** A 50257-token output layer is 30x the cost of the rest of a model this
small on a CPU. The model keeps the full GPT-2 vocabulary, but only ``kept`` tokens (every pool token
plus the most frequent background tokens) have trainable embedding rows; the others are fixed at zero,
so their logit is exactly 0. The training loss is then the *exact* full-vocabulary cross-entropy,
computed from the kept logits plus one extra logit ``log(number of zero rows)`` for the rest. The
saved checkpoint is a plain GPT-Neo with the full vocabulary: every metric and every unlearning run
sees an ordinary model (rare tokens simply behave like an "unknown" token).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, cast

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.sources import GPT2_VOCAB_SIZE
from unlearnkit.progress import Progress
from unlearnkit.showcase.testbed.data import TestbedData, TestbedSettings, concat_blocks
from unlearnkit.training import OptimisationStep


def new_model(settings: TestbedSettings) -> Any:
    """A randomly initialised GPT-Neo of the settings' shape with the full GPT-2 vocabulary."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(settings.seed)
    eos = GPT2_VOCAB_SIZE - 1
    config = GPTNeoConfig(
        vocab_size=GPT2_VOCAB_SIZE, hidden_size=settings.hidden, num_layers=settings.layers,
        num_heads=settings.heads, attention_types=[[["global", "local"], max(1, settings.layers // 2)]],
        intermediate_size=4 * settings.hidden, max_position_embeddings=max(settings.seq_len, 64),
        window_size=max(settings.seq_len, 64), bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True,
    )
    if settings.layers == 1:
        config.attention_types = [[["global"], 1]]
        config.attention_layers = ["global"]
    return GPTNeoForCausalLM(config)


def kept_tokens(data: TestbedData, settings: TestbedSettings) -> torch.Tensor:
    """Sorted ids with trainable rows: every pool token, the EOS, and the ``kept_background_tokens`` most
    frequent background tokens (held-out text plays no part in the choice)."""
    counts = Counter(data.background.input_ids[data.background.attention_mask > 0].tolist())
    kept = {int(t) for t in data.pool.input_ids[data.pool.attention_mask > 0].tolist()}
    kept |= {t for t, _ in counts.most_common(settings.kept_background_tokens)}
    kept.add(GPT2_VOCAB_SIZE - 1)
    return torch.tensor(sorted(kept), dtype=torch.long)


def restricted_lm_loss(model: Any, blocks: TokenBlocks, kept: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """The exact full-vocabulary next-token cross-entropy when every row outside ``kept`` is zero.

    Zero rows give logit 0, so the log-partition is ``logsumexp(kept logits, log(#zero rows))`` and a
    target outside ``kept`` has logit 0.
    """
    hidden = model.transformer(input_ids=blocks.input_ids, attention_mask=blocks.attention_mask).last_hidden_state
    logits = hidden[:, :-1] @ model.lm_head.weight[kept].t()
    rest = math.log(GPT2_VOCAB_SIZE - len(kept))
    lse = torch.logsumexp(torch.cat([logits, torch.full_like(logits[..., :1], rest)], dim=-1), dim=-1)
    position = lookup[blocks.input_ids[:, 1:]]
    target = logits.gather(-1, position.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    target = torch.where(position >= 0, target, torch.zeros_like(target))
    valid = blocks.attention_mask[:, 1:] > 0
    return ((lse - target) * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def restricted_ma(model: Any, blocks: TokenBlocks, kept: torch.Tensor, lookup: torch.Tensor,
                  batch_size: int = 64) -> float:
    """Mean MA (Eq. 8) of ``blocks`` from the kept logits only: exact while every row outside ``kept`` is zero
    (a zero row has logit 0, so the argmax is a kept token exactly when the best kept logit is above 0)."""
    model.eval()
    hits = total = 0
    weight = model.lm_head.weight[kept]
    for start in range(0, len(blocks), batch_size):
        ids = blocks.input_ids[start:start + batch_size]
        mask = blocks.attention_mask[start:start + batch_size]
        hidden = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        best, position = (hidden @ weight.t()).max(dim=-1)
        target = lookup[ids[:, 1:]]
        valid = mask[:, 1:] > 0
        hits += int(((position == target) & (target >= 0) & (best > 0) & valid).sum())
        total += int(valid.sum())
    return hits / max(total, 1)


def _fused() -> bool:
    # The fused AdamW kernel is much faster on the large (mostly frozen) embedding; older torch lacks it on CPU.
    return tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 4)


@dataclass
class TrainResult:
    """How a build's training went."""

    epochs: int
    steps: int
    pool_ma: float
    reached_target: bool
    history: list[dict[str, float]]
    tokens: int


def train_testbed(model: Any, data: TestbedData, settings: TestbedSettings, progress: Progress) -> TrainResult:
    """Train from scratch on pool + background until pool MA ≥ target (checked after every epoch)."""
    kept = kept_tokens(data, settings)
    lookup = torch.full((GPT2_VOCAB_SIZE,), -1, dtype=torch.long)
    lookup[kept] = torch.arange(len(kept))
    frozen = lookup < 0
    weight = model.transformer.wte.weight
    with torch.no_grad():
        weight[frozen] = 0.0
    weight.register_hook(lambda grad: grad.masked_fill(frozen.unsqueeze(1), 0.0))
    # The settings' warm-up reaches the full lr at update warmup_steps - 1 (cached builds depend on it).
    update = OptimisationStep(model.parameters(), lr=settings.lr, warmup_steps=max(0, settings.warmup_steps - 1),
                              betas=(0.9, 0.98), fused=_fused())
    generator = torch.Generator().manual_seed(settings.seed)
    background_order = torch.randperm(len(data.background), generator=generator)
    per_epoch = len(data.pool) + settings.background_per_epoch
    steps_per_epoch = math.ceil(per_epoch / settings.batch_size)
    history: list[dict[str, float]] = []
    steps = tokens = cursor = 0
    ma = 0.0
    started = time.perf_counter()
    ticks = cast(Generator[int, None, None], progress.track(
        range(settings.max_epochs), total=settings.max_epochs, description=f"training the {settings.size} testbed",
        unit="epochs"))
    with contextlib.closing(ticks):
        for epoch in ticks:
            take = (background_order.roll(-cursor)[: settings.background_per_epoch]).tolist()
            cursor = (cursor + settings.background_per_epoch) % len(data.background)
            epoch_blocks = concat_blocks([data.pool, data.background.subset(take)], "epoch")
            order = torch.randperm(len(epoch_blocks), generator=generator)
            model.train()
            losses = []
            for start in range(0, len(order), settings.batch_size):
                batch = epoch_blocks.subset(order[start:start + settings.batch_size])
                loss = restricted_lm_loss(model, batch, kept, lookup)
                update(loss)
                losses.append(float(loss.detach()))
                steps += 1
                tokens += batch.num_tokens
            ma = restricted_ma(model, data.pool, kept, lookup)
            history.append({"epoch": epoch + 1, "loss": round(sum(losses) / len(losses), 4), "pool_ma": round(ma, 4),
                            "elapsed_s": round(time.perf_counter() - started, 1)})
            if not progress.quiet:
                progress.console.print(f"  epoch {epoch + 1}: loss {history[-1]['loss']:.3f}, pool MA {ma:.3f} "
                                       f"(target {settings.target_ma}), {steps_per_epoch} steps")
            if ma >= settings.target_ma:
                return TrainResult(epoch + 1, steps, ma, True, history, tokens)
    return TrainResult(settings.max_epochs, steps, ma, False, history, tokens)
