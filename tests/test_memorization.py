"""MA and EL_n (paper Appendix B): fast EL equals the reference, both equal brute force, MA equals a loop."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from conftest import memorize_fully, tiny_gpt_neo
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.metrics.decoding import eval_mode, generate_continuations, greedy_generate
from unlearnkit.metrics.memorization import (
    _el_from_continuations,
    _reference_continuations,
    extraction_likelihood,
    extraction_likelihood_details,
    extraction_likelihood_reference,
    memorization_accuracy,
    ngrams,
    overlap_n,
)
from unlearnkit.metrics.thresholds import Thresholds, bootstrap_ci, thresholds_from_holdout

VOCAB = 96
EOS = VOCAB - 1  # tiny_gpt_neo's eos/bos id
# Greedy decodings that differ by float rounding (a batched against a one-row pass, a reused KV cache against a
# prefilled one, another CPU: about 1e-6 in the logits) take the same tokens when no decision is closer than this.
NO_NEAR_TIE = 1e-4


@pytest.fixture(scope="module")
def memorized():
    gen = torch.Generator().manual_seed(1)
    seqs = torch.randint(0, VOCAB - 1, (4, 32), generator=gen)
    seqs[1, 10] = EOS  # an EOS inside a memorised text is an ordinary token
    seqs[2, 20] = EOS
    model = memorize_fully(tiny_gpt_neo(vocab_size=VOCAB), seqs)
    assert memorization_accuracy(model, seqs).min() > 0.9
    return model, seqs


@pytest.fixture(scope="module")
def mixed_batch(memorized):
    """Memorised and random rows, right-padded to different valid lengths, EOS inside some rows."""
    _, seqs = memorized
    gen = torch.Generator().manual_seed(2)
    rand = torch.randint(0, VOCAB, (3, 32), generator=gen)
    rand[0, 5] = EOS
    rows = [seqs[0].tolist(), seqs[1, :27].tolist(), seqs[2].tolist(), seqs[3, :12].tolist(),
            rand[0].tolist(), rand[1, :21].tolist(), rand[2, :11].tolist()]
    return TokenBlocks.from_lists(rows, name="mixed", pad_id=0)


def test_ngrams_and_overlap_on_hand_made_lists():
    assert ngrams([1, 2, 3, 4], 2) == [(1, 2), (2, 3), (3, 4)]
    assert ngrams([1, 2], 3) == []
    # label 2-grams {(1,2),(2,3),(3,1)}: 3; pred 2-grams (1,2),(2,1),(1,2),(2,3): 3 hits (repeats count)
    assert overlap_n([1, 2, 1, 2, 3], [1, 2, 3, 1], 2) == pytest.approx(3 / 3)
    assert overlap_n([9, 9, 9], [1, 2, 3], 1) == 0.0
    assert overlap_n([1, 1, 1], [1, 2, 3, 4], 1) == pytest.approx(3 / 4)
    assert overlap_n([1, 2, 3], [1, 2], 3) is None  # undefined term: skipped by EL


def test_el_assembly_by_hand():
    # x = 1 2 3 4 5, n = 2: terms i = 1..3 (label x[i:] has >= 2 tokens), denominator T - n = 3.
    x = [1, 2, 3, 4, 5]
    conts = [[], [2, 3, 9, 9], [3, 4, 5], [9, 5], [5]]
    # i=1: label 2345 -> {23,34,45}; pred 2399 has 23 -> 1/3.  i=2: pred 345 = label -> 2/2.
    # i=3: label 45 -> {45}; pred 95 -> 0/1.
    assert _el_from_continuations(x, conts, 2) == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_ma_equals_explicit_prefix_loop(memorized, mixed_batch):
    model, _ = memorized
    ma = memorization_accuracy(model, mixed_batch.input_ids, mixed_batch.attention_mask)
    lengths = mixed_batch.attention_mask.sum(1).tolist()
    with torch.no_grad():
        for b, length in enumerate(lengths):
            x = mixed_batch.input_ids[b, :length]
            hits = sum(int(model(input_ids=x[None, :i]).logits[0, -1].argmax() == x[i])
                       for i in range(1, length))
            assert ma[b].item() == pytest.approx(hits / (length - 1), abs=1e-12)


def test_a_pass_in_batches_of_similar_length_gives_each_row_what_it_scores_alone(memorized, mixed_batch):
    # rows of 32, 27, 32, 12, 32, 21 and 11 tokens, 3 to a batch: batched by length and each batch cut to its
    # longest row, then put back in order; each row's MA and log-probabilities are those of the row by itself
    from unlearnkit.metrics.memorization import teacher_forced_pass

    model, _ = memorized
    passed = teacher_forced_pass(model, mixed_batch.input_ids, mixed_batch.attention_mask, batch_size=3,
                                 with_log_probs=True)
    assert passed.log_probs is not None
    with torch.no_grad():
        for row, length in enumerate(mixed_batch.attention_mask.sum(1).tolist()):
            x = mixed_batch.input_ids[row, :length]
            logits = model(input_ids=x[None]).logits[0, :-1].double()
            alone = torch.log_softmax(logits, dim=-1).gather(-1, x[1:, None])[:, 0]
            torch.testing.assert_close(passed.log_probs[row], alone, rtol=0, atol=1e-5)
            assert passed.ma[row].item() == pytest.approx(float((logits.argmax(-1) == x[1:]).double().mean()),
                                                          abs=1e-12)


def test_ma_restores_training_mode(memorized):
    model, seqs = memorized
    model.train()
    try:
        memorization_accuracy(model, seqs)
        assert model.training
    finally:
        model.eval()


def test_memorized_sequences_have_el_one(memorized):
    model, seqs = memorized
    full = seqs[memorization_accuracy(model, seqs) == 1.0]
    assert len(full) == len(seqs)  # the fixture memorises every row
    # a perfectly memorised text reproduces itself from every prefix
    assert torch.equal(extraction_likelihood(model, full, n=5), torch.ones(len(full), dtype=torch.float64))


@pytest.fixture(scope="module")
def reference_continuations(memorized, mixed_batch):
    """The reference's greedy continuations do not depend on n: generate them once for all n."""
    model, _ = memorized
    lengths = mixed_batch.attention_mask.sum(1).tolist()
    return _reference_continuations(model, mixed_batch.input_ids, lengths, batch_size=32)


@pytest.mark.parametrize("n", [1, 5, 10])
def test_fast_el_equals_reference(memorized, mixed_batch, reference_continuations, n):
    model, _ = memorized
    keep = mixed_batch.attention_mask.sum(1) >= n + 1
    ids, mask = mixed_batch.input_ids[keep], mixed_batch.attention_mask[keep]
    rows, conts = reference_continuations
    ref = torch.tensor([_el_from_continuations(rows[b], conts[b], n) for b in range(len(rows)) if keep[b]],
                       dtype=torch.float64)
    fast = extraction_likelihood_details(model, ids, n=n, attention_mask=mask, batch_size=8)
    assert fast.min_margin > NO_NEAR_TIE  # so the two decodings' rounding cannot part them
    assert torch.equal(fast.el, ref), (fast.el, ref)
    assert 0 < fast.branches < fast.prefixes  # both chained and branched prefixes were exercised
    assert ref[0] > 0.5 and ref[-1] < 0.5  # memorised rows score high, random ones low


def test_public_reference_equals_fast(memorized, mixed_batch):
    model, _ = memorized
    sub = mixed_batch.subset([3, 6])  # short memorised, short random (both padded)
    ref = extraction_likelihood_reference(model, sub.input_ids, n=10, attention_mask=sub.attention_mask)
    fast = extraction_likelihood(model, sub.input_ids, n=10, attention_mask=sub.attention_mask)
    assert torch.equal(fast, ref)


def test_fast_el_equals_reference_on_untrained_model():
    model = tiny_gpt_neo(vocab_size=VOCAB, seed=3)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    ref = extraction_likelihood_reference(model, ids, n=1)
    fast = extraction_likelihood_details(model, ids, n=1, batch_size=5)
    assert fast.min_margin > NO_NEAR_TIE and torch.equal(fast.el, ref)


def _brute_force_el(model, x: list[int], n: int) -> float:
    """Jang et al.'s loop with model.generate on one unpadded sequence, written independently."""
    length = len(x)
    total = 0.0
    for i in reversed(range(1, length)):
        config = GenerationConfig(do_sample=False, max_new_tokens=length - i, pad_token_id=0)
        out = model.generate(torch.tensor([x[:i]]), attention_mask=torch.ones(1, i, dtype=torch.long),
                             generation_config=config)
        pred = out[0, i:].tolist()
        assert len(pred) == length - i  # generation went on past EOS
        label = x[i:]
        label_grams = [tuple(label[k : k + n]) for k in range(len(label) - n + 1)]
        if not label_grams:
            continue
        pred_grams = [tuple(pred[k : k + n]) for k in range(len(pred) - n + 1)]
        total += sum(g in set(label_grams) for g in pred_grams) / len(label_grams)
    return total / (length - n)


def test_reference_equals_brute_force_generate(memorized, mixed_batch):
    model, _ = memorized
    rows = [1, 6]  # memorised with EOS and padding, short random
    lengths = mixed_batch.attention_mask.sum(1)
    ref = extraction_likelihood_reference(model, mixed_batch.input_ids[rows], n=5,
                                          attention_mask=mixed_batch.attention_mask[rows])
    # model.generate would stop at EOS; the definition generates the full length, so switch EOS off.
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        for k, b in enumerate(rows):
            x = mixed_batch.input_ids[b, : int(lengths[b])].tolist()
            assert ref[k].item() == pytest.approx(_brute_force_el(model, x, 5), abs=1e-12)
    finally:
        model.generation_config.eos_token_id = saved


def test_padding_does_not_change_values(memorized, mixed_batch):
    model, _ = memorized
    both = extraction_likelihood(model, mixed_batch.input_ids, n=5, attention_mask=mixed_batch.attention_mask)
    alone = extraction_likelihood(model, mixed_batch.input_ids[3:4, :12], n=5)
    assert both[3].item() == pytest.approx(alone[0].item(), abs=1e-12)


def test_sequence_shorter_than_n_plus_one_raises(tiny_model):
    ids = torch.randint(0, VOCAB, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # 10 valid tokens < n + 1 = 11
    for fn in (extraction_likelihood, extraction_likelihood_reference):
        with pytest.raises(UnlearnkitError, match="shorter than n\\+1"):
            fn(tiny_model, ids, n=10, attention_mask=mask)


def test_thresholds_from_holdout(memorized, mixed_batch):
    model, _ = memorized
    th = thresholds_from_holdout(model, mixed_batch, n=5, bootstrap=200, seed=0)
    assert isinstance(th, Thresholds) and th.n_sequences == len(mixed_batch) and th.source == "mixed"
    ma = memorization_accuracy(model, mixed_batch.input_ids, mixed_batch.attention_mask)
    assert th.ma == pytest.approx(float(ma.mean()))
    assert th.ma_ci[0] <= th.ma <= th.ma_ci[1] and th.el_ci[0] <= th.el <= th.el_ci[1]
    assert th.to_dict()["ma_ci"] == list(th.ma_ci)
    assert bootstrap_ci(torch.full((5,), 0.25)) == (0.25, 0.25)


def test_batched_greedy_stays_inside_the_position_table():
    # A GPT-Neo whose 20 positions are exactly its texts' length (as the testbed's): rows of one batch need
    # different numbers of new tokens, and no row may be pushed past position 19. Batched = one by one.
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    model = GPTNeoForCausalLM(GPTNeoConfig(
        vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
        max_position_embeddings=20, window_size=20, intermediate_size=64, bos_token_id=0, eos_token_id=0)).eval()
    prompts = [list(range(1, 20)), list(range(1, 15)), list(range(3, 6)), list(range(2, 21))]
    wanted = [1, 6, 17, 0]
    with eval_mode(model):
        batched, _ = greedy_generate(model, prompts, wanted, batch_size=4)
        alone = [greedy_generate(model, [p], [w])[0][0] for p, w in zip(prompts, wanted, strict=True)]
    assert batched == alone
    assert [len(c) for c in batched] == wanted


def test_fixed_length_generation_is_the_same_greedy_decoding_past_eos(memorized, mixed_batch):
    """model.generate (the library path of the extraction attack and the leak test) gives exactly the tokens of
    EL's own decoder, left padding and EOS inside the continuations included, and leaves the model's EOS set."""
    model, seqs = memorized
    prompts = [seqs[1, :8].tolist(), seqs[2, :15].tolist(), mixed_batch.input_ids[4, :5].tolist()]
    eos_before = model.generation_config.eos_token_id
    with eval_mode(model):
        ours, _ = greedy_generate(model, prompts, 16)
        library = generate_continuations(model, prompts, 16, batch_size=2, pad_id=0)
    assert library == ours and all(len(c) == 16 for c in library)
    assert EOS in {t for c in library for t in c}  # decoding went on through an EOS
    assert model.generation_config.eos_token_id == eos_before


def _tiny(architecture: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    if architecture == "gpt-neo":
        return tiny_gpt_neo(vocab_size=VOCAB)
    if architecture == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                          bos_token_id=EOS, eos_token_id=EOS)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        bos_token_id=EOS, eos_token_id=EOS)).eval()


@pytest.mark.parametrize("architecture", ["gpt-neo", "gpt2", "llama"])
def test_cache_reuse_gives_the_reference_tokens_on_each_architecture(architecture):
    """Branch prefixes cut from the teacher-forced KV cache decode the same greedy tokens as prefilling them
    (and as the reference): memorised and random rows, right padding, EOS inside a text, n = 1, 5, 10."""
    gen = torch.Generator().manual_seed(6)
    seqs = torch.randint(0, VOCAB - 1, (3, 24), generator=gen)
    seqs[1, 9] = EOS
    model = memorize_fully(_tiny(architecture), seqs)
    rand = torch.randint(0, VOCAB, (2, 24), generator=gen)
    rand[0, 4] = EOS
    blocks = TokenBlocks.from_lists([seqs[0].tolist(), seqs[1, :19].tolist(), seqs[2].tolist(), rand[0].tolist(),
                                     rand[1, :15].tolist()], name="mixed", pad_id=0)
    lengths = blocks.attention_mask.sum(1).tolist()
    rows, conts = _reference_continuations(model, blocks.input_ids, lengths, batch_size=32)
    for n in (1, 5, 10):
        reference = torch.tensor([_el_from_continuations(rows[b], conts[b], n) for b in range(len(rows))],
                                 dtype=torch.float64)
        reused = extraction_likelihood_details(model, blocks.input_ids, n=n, attention_mask=blocks.attention_mask,
                                               batch_size=4)
        assert reused.reused_cache and 0 < reused.branches < reused.prefixes
        prefilled = extraction_likelihood_details(model, blocks.input_ids, n=n, attention_mask=blocks.attention_mask,
                                                  batch_size=4, reuse_cache=False)
        assert not prefilled.reused_cache
        assert min(reused.min_margin, prefilled.min_margin) > NO_NEAR_TIE
        assert torch.equal(reused.el, reference) and torch.equal(prefilled.el, reference), (n, reused.el, reference)


def test_cache_reuse_is_exact_where_decoding_outgrows_a_sliding_window():
    """A Mistral-family model whose sliding window (26) is shorter than a decode batch's padded width plus its
    steps: the cache layers grow in place up to the window and then hand over to transformers' own sliding
    update, and rows that finished are dropped from the batch before and after that hand-over (both checked to
    happen). Same values as the reference."""
    from transformers import MistralConfig, MistralForCausalLM
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    torch.manual_seed(7)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=26, bos_token_id=EOS,
        eos_token_id=EOS)).eval()
    ids = torch.randint(0, VOCAB, (4, 24), generator=torch.Generator().manual_seed(8))
    rows, conts = _reference_continuations(model, ids, [24] * 4, batch_size=32)
    reference = torch.tensor([_el_from_continuations(rows[b], conts[b], 3) for b in range(4)], dtype=torch.float64)
    handed_over = []
    sliding_update = DynamicSlidingWindowLayer.update

    def counting_update(layer, *args, **kwargs):
        handed_over.append(type(layer).__name__)
        return sliding_update(layer, *args, **kwargs)

    selected_after_hand_over = []
    select = DynamicLayer.batch_select_indices

    def counting_select(layer, indices):
        selected_after_hand_over.append(type(layer).__name__)
        return select(layer, indices)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DynamicSlidingWindowLayer, "update", counting_update)
        patch.setattr(DynamicLayer, "batch_select_indices", counting_select)
        fast = extraction_likelihood_details(model, ids, n=3, batch_size=8)
    assert fast.reused_cache and fast.branches > 60 and fast.min_margin > NO_NEAR_TIE
    assert "GrowsInPlaceDynamicSlidingWindowLayer" in handed_over
    assert "GrowsInPlaceDynamicSlidingWindowLayer" in selected_after_hand_over
    assert torch.equal(fast.el, reference), (fast.el, reference)
