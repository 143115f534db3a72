"""Document perplexity with a strided sliding window, against per-token brute force and the block perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_gpt_neo, tiny_tokenizer
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.sources import load_documents
from unlearnkit.metrics.perplexity import document_perplexity, perplexity

TEXTS = ["The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun all afternoon long.",
         "A short one.",
         "Numbers: one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen."]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = tiny_tokenizer(TEXTS * 20, vocab_size=300)
    return tiny_gpt_neo(vocab_size=len(tokenizer), seed=3), tokenizer


def _token_nll(model, context: list[int], target: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context])).logits[0, -1].double()
    return float(torch.logsumexp(logits, 0) - logits[target])


def _brute_force(model, tokenizer, texts: list[str], window: int, stride: int) -> tuple[float, int]:
    """Each token t >= 1 of each document, scored once, by the first window (starting at 0, stride, 2*stride, ...)
    whose end lies beyond it, with that window's tokens before t as context."""
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for t in range(1, len(ids)):
            begin = next(b for b in range(0, len(ids), stride) if min(b + window, len(ids)) > t)
            total += _token_nll(model, ids[begin:t], ids[t])
            count += 1
    return math.exp(total / count), count


@pytest.mark.parametrize(("window", "stride"), [(8, 4), (8, 7), (12, 5), (1024, 512)])
def test_strided_window_equals_per_token_brute_force(model_and_tokenizer, window, stride):
    model, tokenizer = model_and_tokenizer
    expected, count = _brute_force(model, tokenizer, TEXTS, window, stride)
    result = document_perplexity(model, tokenizer, TEXTS, window=window, stride=stride, batch_size=3)
    assert result["tokens"] == count == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) - 1
                                            for t in TEXTS)
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert result["documents"] == 3 and result["window"] == window and result["stride"] == stride


def test_a_document_that_fits_the_window_scores_like_a_block(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    block = TokenBlocks.from_lists([ids], "one document")
    direct = perplexity(model, block)
    assert document_perplexity(model, tokenizer, [TEXTS[0]], window=len(ids))["perplexity"] == pytest.approx(
        direct, rel=1e-6)
    # ... and the default window (the model's context, capped at 1024) holds it whole
    assert document_perplexity(model, tokenizer, [TEXTS[0]])["perplexity"] == pytest.approx(direct, rel=1e-6)


def test_bad_stride_is_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="stride"):
        document_perplexity(model, tokenizer, TEXTS, window=8, stride=8)  # no overlap: tokens would go unscored


def test_pile_and_wikitext_documents_load_in_file_order(data_dir):
    pile = load_documents("pile", data_dir)
    assert len(pile) == 1500 and all(pile)
    assert load_documents("pile", data_dir, limit=3) == pile[:3]
    assert len(load_documents("wikitext", data_dir)) > 0
