"""Empirical Fisher (paper Eq. 2): both estimators against autograd by hand, save/load checks."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_gpt_neo
from unlearnkit.adapters.fisher import empirical_fisher, load_fisher, save_fisher
from unlearnkit.adapters.lora import attach_lora
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError

Q0 = "transformer.h.0.attn.attention.q_proj.weight"
C1 = "transformer.h.1.mlp.c_fc.weight"


def _blocks(n: int = 4, t: int = 12, pad_last: int = 0, seed: int = 0) -> TokenBlocks:
    ids = torch.randint(0, 95, (n, t), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    if pad_last:
        mask[-1, -pad_last:] = 0
    return TokenBlocks(ids, mask, "forget")


def _mean_loss_grad(model: torch.nn.Module, blocks: TokenBlocks, rows: slice,
                    name: str) -> tuple[torch.Tensor, int]:
    """Gradient of the mean next-token loss of some rows, via HF's own loss, and the token count."""
    param = dict(model.named_parameters())[name]
    labels = blocks.labels()[rows]
    out = model(input_ids=blocks.input_ids[rows], attention_mask=blocks.attention_mask[rows], labels=labels)
    (grad,) = torch.autograd.grad(out.loss, param)
    return grad, int((labels[:, 1:] != -100).sum())


def test_per_sequence_equals_brute_force_mean_of_squared_per_sequence_gradients() -> None:
    model, blocks = tiny_gpt_neo(), _blocks()
    result = empirical_fisher(model, [Q0, C1], blocks, estimator="per_sequence")
    for name in (Q0, C1):
        grads = [_mean_loss_grad(model, blocks, slice(i, i + 1), name)[0] for i in range(len(blocks))]
        brute = torch.stack([g.square() for g in grads]).mean(0)  # Eq. 2: average of squared gradients
        torch.testing.assert_close(result.normalised()[name], brute, rtol=1e-4, atol=1e-10)
    assert result.num_sequences == 4 and result.num_tokens == 4 * 11


def test_per_sequence_weights_padded_sequences_by_their_token_count() -> None:
    model, blocks = tiny_gpt_neo(), _blocks(pad_last=5)
    result = empirical_fisher(model, [Q0], blocks, estimator="per_sequence")
    parts = [_mean_loss_grad(model, blocks, slice(i, i + 1), Q0) for i in range(len(blocks))]
    expected = sum(n * g.square() for g, n in parts) / sum(n for _, n in parts)
    torch.testing.assert_close(result.normalised()[Q0], expected, rtol=1e-4, atol=1e-10)


def test_per_batch_equals_token_weighted_squared_batch_mean_gradient() -> None:
    model, blocks = tiny_gpt_neo(), _blocks(n=5, pad_last=3)
    result = empirical_fisher(model, [Q0], blocks, batch_size=2, estimator="per_batch")
    parts = [_mean_loss_grad(model, blocks, slice(s, s + 2), Q0) for s in (0, 2, 4)]
    by_hand = sum(n * g.square() for g, n in parts) / sum(n for _, n in parts)
    torch.testing.assert_close(result.normalised()[Q0], by_hand, rtol=1e-4, atol=1e-10)
    assert result.num_tokens == sum(n for _, n in parts)


def test_only_targets_get_gradients_and_flags_are_restored() -> None:
    peft_model = attach_lora(tiny_gpt_neo(), ["q_proj", "c_fc"], rank=2)
    before = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    modes = {n: m.training for n, m in peft_model.named_modules()}
    result = empirical_fisher(peft_model, ["q_proj", "c_fc"], _blocks(n=2))
    assert {n: p.requires_grad for n, p in peft_model.named_parameters()} == before
    assert all(p.grad is None for p in peft_model.parameters())
    # The wrapper says training=True around an eval-mode model; each module keeps its own mode.
    assert {n: m.training for n, m in peft_model.named_modules()} == modes
    assert not peft_model.base_model.model.transformer.h[0].attn.attention.training
    # Keys are the plain model's names, and the numbers match the unwrapped model (B = 0 at start).
    plain = empirical_fisher(tiny_gpt_neo(), ["q_proj", "c_fc"], _blocks(n=2))
    assert set(result.sums) == set(plain.sums) and Q0 in plain.sums
    for k in plain.sums:
        torch.testing.assert_close(result.sums[k], plain.sums[k], rtol=1e-5, atol=1e-12)


def test_save_load_roundtrip_and_mismatches(tmp_path) -> None:
    model = tiny_gpt_neo()
    result = empirical_fisher(model, ["q_proj"], _blocks(n=2), estimator="per_sequence")
    path = tmp_path / "forget.safetensors"
    save_fisher(result, path)
    loaded = load_fisher(path, model, ["q_proj"])
    assert loaded.estimator == "per_sequence" and loaded.num_tokens == result.num_tokens
    assert loaded.fingerprint == result.fingerprint
    for k in result.sums:
        torch.testing.assert_close(loaded.sums[k], result.sums[k])
    with pytest.raises(UnlearnkitError, match="does not match"):
        load_fisher(path, model, ["q_proj", "v_proj"])  # the file lacks v_proj
    with pytest.raises(UnlearnkitError, match="shape"):
        load_fisher(path, tiny_gpt_neo(hidden=64), ["q_proj"])
    with pytest.raises(UnlearnkitError, match="estimator"):
        load_fisher(path, model, ["q_proj"], estimator="per_batch")
    with pytest.warns(UserWarning, match="different weights"):
        load_fisher(path, tiny_gpt_neo(seed=5), ["q_proj"])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UnlearnkitError, match="Cannot read"):
        load_fisher(tmp_path / "junk.safetensors")


def test_bad_inputs_are_user_errors() -> None:
    model = tiny_gpt_neo()
    empty = TokenBlocks(torch.zeros(0, 8, dtype=torch.long), torch.zeros(0, 8, dtype=torch.long), "retain")
    with pytest.raises(UnlearnkitError, match="empty"):
        empirical_fisher(model, ["q_proj"], empty)
    with pytest.raises(UnlearnkitError, match="match no"):
        empirical_fisher(model, ["query"], _blocks(n=1))
    with pytest.raises(UnlearnkitError, match="estimator"):
        empirical_fisher(model, ["q_proj"], _blocks(n=1), estimator="diagonal")


def test_loss_helper_matches_hf_loss() -> None:
    # The Fisher pass computes its own summed loss; make sure it is HF's mean loss times the token count.
    from unlearnkit.adapters.fisher import _sum_token_loss

    model, blocks = tiny_gpt_neo(), _blocks(pad_last=4)
    with torch.no_grad():
        total, n = _sum_token_loss(model, blocks.input_ids, blocks.attention_mask, blocks.labels())
        hf = model(input_ids=blocks.input_ids, attention_mask=blocks.attention_mask,
                   labels=blocks.labels()).loss
    assert n == 4 * 11 - 4
    torch.testing.assert_close(total / n, hf, rtol=1e-5, atol=1e-6)
