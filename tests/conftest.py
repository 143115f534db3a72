"""Shared fixtures: tiny randomly initialised models and the offline data pack."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tiny models gain nothing from a second thread, and OpenMP threads that spin while another
# process holds the other core make them up to 100x slower.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tiny_gpt_neo(vocab_size: int = 96, seed: int = 0, layers: int = 2, hidden: int = 32):
    """A GPT-Neo small enough to memorise a few sequences in seconds."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_heads=4,
        attention_types=[[["global", "local"], layers // 2]] if layers % 2 == 0 else [[["global"], layers]],
        intermediate_size=4 * hidden, max_position_embeddings=256, window_size=256,
        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
    )
    return GPTNeoForCausalLM(config).eval()


@pytest.fixture
def data_dir() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("the offline data pack ../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny_model():
    return tiny_gpt_neo()


def tiny_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in about a second: keeps tiny models' output layers small."""
    from unlearnkit.modeling import train_byte_bpe_tokenizer

    return train_byte_bpe_tokenizer(texts, vocab_size)


def memorize_fully(model, seqs: torch.Tensor, max_epochs: int = 300):
    """Train ``model`` on the rows ``seqs`` (one batch) until every row has MA = 1; returns it in eval mode."""
    from unlearnkit.data.blocks import TokenBlocks
    from unlearnkit.showcase.memorize import memorize

    blocks = TokenBlocks(seqs, torch.ones_like(seqs), "memorized")
    result = memorize(model, blocks, target_ma=1.0, max_epochs=max_epochs, lr=3e-3, batch_size=len(seqs),
                      check_every=25)
    assert result.reached_target, result
    return model.eval()
