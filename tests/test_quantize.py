"""The quantisation attack's quantiser: RTN error bounds derived from the format, GGUF blocks, whole tiny models
(GPT-2 Conv1D and GPT-Neo Linear) that still save and load with transformers, and LoRA adapters kept intact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from conftest import tiny_gpt_neo
from unlearnkit.attacks.quantize import (
    QuantSpec,
    gguf_round_trip,
    quantize_base_only,
    quantize_dequantize,
    quantize_model,
)


def _weights_with_varied_groups(rows: int, width: int, group: int, seed: int = 0) -> torch.Tensor:
    """Gaussian weights whose groups have scales spread over three orders of magnitude (as real layers do)."""
    generator = torch.Generator().manual_seed(seed)
    scales = 10 ** torch.empty(rows, width // group, 1).uniform_(-3, 0, generator=generator)
    return (torch.randn(rows, width // group, group, generator=generator) * scales).reshape(rows, width)


def _groups(weight: torch.Tensor, group: int) -> torch.Tensor:
    return weight.double().reshape(weight.shape[0], -1, group)


# ---- one tensor ------------------------------------------------------------------------------------------------


def test_symmetric_int8_stays_within_half_a_step_of_each_group_and_on_its_grid():
    weight = _weights_with_varied_groups(6, 256, 32)
    restored = quantize_dequantize(weight, 8, 32, symmetric=True)
    original, rounded = _groups(weight, 32), _groups(restored, 32)
    for row in range(original.shape[0]):
        for index in range(original.shape[1]):
            group, result = original[row, index], rounded[row, index]
            step = group.abs().max() / 127
            assert ((group - result).abs() <= step / 2 * (1 + 1e-5)).all()
            levels = result / step
            assert torch.allclose(levels, levels.round(), atol=1e-4)
            assert levels.round().abs().max() <= 127


def test_asymmetric_int4_stays_within_half_a_step_of_each_group():
    weight = _weights_with_varied_groups(6, 128, 32, seed=1) + 0.3  # off-centre groups need the zero point
    restored = quantize_dequantize(weight, 4, 32, symmetric=False)
    original, rounded = _groups(weight, 32), _groups(restored, 32)
    step = (original.amax(-1, keepdim=True) - original.amin(-1, keepdim=True)) / 15
    assert ((original - rounded).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()
    # the error is as large as the format allows: RTN is not secretly keeping more precision
    assert ((original - rounded).abs() / step).max() > 0.4


def test_per_channel_groups_are_whole_rows():
    weight = _weights_with_varied_groups(4, 96, 96, seed=2)
    restored = quantize_dequantize(weight, 4, None, symmetric=True)
    step = weight.double().abs().amax(-1, keepdim=True) / 7
    assert ((weight.double() - restored.double()).abs() <= step / 2 * (1 + 1e-5)).all()
    assert torch.equal(restored, quantize_dequantize(weight, 4, 96, symmetric=True))


def test_values_on_the_grid_come_back_exactly():
    step = 2.0**-6  # a power of two keeps every grid value and every scale exact in float
    # every level -127..127, in two groups of 128 whose largest magnitude (127) fixes the scale at `step`
    symmetric = torch.cat([torch.arange(-127.0, 128.0), torch.tensor([127.0])]).reshape(1, 256) * step
    assert torch.equal(quantize_dequantize(symmetric, 8, 128, symmetric=True), symmetric)
    asymmetric = (torch.arange(16, dtype=torch.float64) - 3).repeat(2).reshape(2, 16) * step
    assert torch.equal(quantize_dequantize(asymmetric, 4, 16, symmetric=False), asymmetric)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_a_group_takes_at_most_two_to_the_bits_values(bits, symmetric):
    weight = torch.randn(3, 2048, generator=torch.Generator().manual_seed(bits))
    restored = quantize_dequantize(weight, bits, 1024, symmetric)
    counts = [len(torch.unique(group)) for group in restored.reshape(-1, 1024)]
    assert max(counts) <= 2**bits
    assert min(counts) >= 2 ** (bits - 1)  # gaussian groups use most of the grid


def test_zero_and_constant_groups_survive_without_nan():
    weight = torch.zeros(2, 64)
    weight[1, 32:] = 0.37
    weight[0, 32:] = torch.linspace(-1, 1, 32)
    for symmetric in (True, False):
        restored = quantize_dequantize(weight, 4, 32, symmetric)
        assert torch.isfinite(restored).all()
        assert torch.equal(restored[:, :32], torch.zeros(2, 32))
    assert torch.equal(quantize_dequantize(weight, 4, 32, symmetric=False)[1, 32:], weight[1, 32:])


def test_a_group_size_that_does_not_divide_the_rows_is_refused():
    with pytest.raises(ValueError, match="not divisible by group_size 32"):
        quantize_dequantize(torch.randn(4, 48), 8, 32, symmetric=True)


def test_dtype_and_shape_are_kept():
    weight = torch.randn(8, 64).to(torch.bfloat16)
    restored = quantize_dequantize(weight, 4, 32, symmetric=True)
    assert restored.dtype == torch.bfloat16 and restored.shape == weight.shape
    assert quantize_dequantize(weight.double(), 4, 32, symmetric=True).dtype == torch.float64


def test_spec_labels_and_validation():
    assert QuantSpec(8, 128, True).label == "int8-g128-sym"
    assert QuantSpec(4, 32, False).label == "int4-g32-asym"
    assert QuantSpec(8, None, True).label == "int8-channel-sym"
    assert QuantSpec(4, gguf="Q4_0").label == "gguf-Q4_0"
    assert QuantSpec(4, gguf="Q4_0").group_size == 32
    for wrong in ({"bits": 1}, {"bits": 9}, {"bits": 4, "group_size": 0}, {"bits": 8, "gguf": "Q4_0"},
                  {"bits": 4, "gguf": "Q5_K"}):
        with pytest.raises(ValueError):
            QuantSpec(**wrong)


# ---- GGUF block formats ----------------------------------------------------------------------------------------


def _blocks(weight: torch.Tensor) -> np.ndarray:
    return weight.double().numpy().reshape(-1, 32)


def test_gguf_q8_0_error_is_half_a_step_plus_the_fp16_scale_rounding():
    weight = _weights_with_varied_groups(8, 128, 32, seed=3) * 100  # keep scales in fp16's normal range
    restored = _blocks(gguf_round_trip(weight, "Q8_0"))
    original = _blocks(weight)
    # Q8_0: d = max|x| / 127 rounds x / d to an int8, but stores d as fp16, which moves level q by q * (d - d16)
    step = np.abs(original).max(axis=1, keepdims=True) / 127
    stored_step = step.astype(np.float16).astype(np.float64)
    bound = step / 2 + 127 * np.abs(step - stored_step)
    assert (np.abs(original - restored) <= bound * (1 + 1e-5)).all()
    assert np.allclose(restored / stored_step, np.round(restored / stored_step), atol=1e-3)


def test_gguf_q4_0_is_coarser_than_q8_0_and_follows_its_grid():
    weight = _weights_with_varied_groups(8, 128, 32, seed=4) * 100
    original = _blocks(weight)
    q8_error = np.abs(_blocks(gguf_round_trip(weight, "Q8_0")) - original)
    restored = _blocks(gguf_round_trip(weight, "Q4_0"))
    # Q4_0: d = -m / 8 with m the block's value of largest magnitude, codes -8..7: m is exact, the opposite
    # extreme can be off by a whole step (8 d clipped to 7 d), so the bound is |d| (plus fp16 scale rounding)
    largest = np.take_along_axis(original, np.abs(original).argmax(axis=1)[:, None], axis=1)
    step = np.abs(largest / 8)
    stored_step = step.astype(np.float16).astype(np.float64)
    assert (np.abs(original - restored) <= step + 8 * np.abs(step - stored_step) + 1e-9).all()
    assert np.abs(original - restored).mean() > 5 * q8_error.mean()
    assert max(len(np.unique(block)) for block in restored) <= 16


def test_gguf_leaves_layers_it_cannot_block_and_says_so():
    torch.manual_seed(0)
    widening, narrowing = nn.Linear(64, 48), nn.Linear(48, 64)
    first, second = widening.weight.detach().clone(), narrowing.weight.detach().clone()
    summary = quantize_model(nn.Sequential(widening, nn.ReLU(), narrowing), QuantSpec(4, gguf="Q4_0"))
    assert summary["weights_quantised"] == 1 and summary["weights_skipped"] == 1
    assert torch.equal(widening.weight, gguf_round_trip(first, "Q4_0"))
    assert torch.equal(narrowing.weight, second)  # 48 inputs: not a whole number of blocks of 32


# ---- whole models ----------------------------------------------------------------------------------------------


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, bos_token_id=127,
                        eos_token_id=127)
    return GPT2LMHeadModel(config).eval()


def _linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach().clone() for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, Conv1D))}


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_gpt_neo], ids=["gpt2-conv1d", "gpt-neo-linear"])
def test_a_quantised_tiny_model_changes_only_its_linear_layers_and_reloads(build, tmp_path):
    model = build()
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    before_weights = _linear_weights(model)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_logits = _logits(model, ids)

    summary = quantize_model(model, QuantSpec(4, 32, True))

    after = _linear_weights(model)
    quantised = [name for name in after if not torch.equal(after[name], before_weights[name])]
    assert sorted(quantised) == sorted(name for name in after if name != "lm_head")
    assert summary["weights_quantised"] == len(quantised)
    assert summary["parameters_quantised"] == sum(before_weights[name].numel() for name in quantised)
    assert 0 < summary["relative_mean_abs_error"] < 0.5
    changed = {key for key, value in model.state_dict().items() if not torch.equal(value, before_state[key])}
    assert changed == {f"{name}.weight" for name in quantised}  # embeddings, lm_head, biases, norms untouched

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))
    quantised_logits = _logits(model, ids)
    assert torch.isfinite(quantised_logits).all()
    assert not torch.allclose(quantised_logits, before_logits)


def test_conv1d_weights_are_grouped_along_their_input_dimension():
    model = tiny_gpt2()
    layer = model.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(layer, Conv1D)
    before = layer.weight.detach().clone()  # [in 64, out 192]
    quantize_model(model, QuantSpec(4, 32, True))
    after = layer.weight.detach()
    rows_before, rows_after = _groups(before.t(), 32), _groups(after.t(), 32)  # each output's inputs, in 32s
    step = rows_before.abs().amax(-1, keepdim=True) / 7
    assert ((rows_before - rows_after).abs() <= step / 2 * (1 + 1e-5)).all()
    assert max(len(torch.unique(group)) for group in rows_after.reshape(-1, 32)) <= 15


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_gpt_neo], ids=["gpt2-conv1d", "gpt-neo-linear"])
def test_int8_moves_the_logits_less_than_int4(build):
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    reference = _logits(build(), ids)
    shifts = {}
    for bits in (8, 4):
        model = build()
        quantize_model(model, QuantSpec(bits, 32, True))
        shifts[bits] = (_logits(model, ids) - reference).abs().mean().item()
    assert 0 < shifts[8] < shifts[4] / 4


def test_a_group_size_that_does_not_divide_a_layer_changes_nothing():
    model = tiny_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="not divisible by group_size 48"):
        quantize_model(model, QuantSpec(8, 48, True))
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_base_only_quantises_the_base_and_keeps_the_lora_adapter_bit_for_bit():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(), LoraConfig(target_modules=["c_attn"], r=4, lora_alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    adapter = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}
    base = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}

    summary = quantize_base_only(model, QuantSpec(4, 32, True))

    now = dict(model.named_parameters())
    assert all(torch.equal(now[name], value) for name, value in adapter.items())
    changed = {name for name, value in base.items() if not torch.equal(now[name], value)}
    # every base linear layer: the wrapped c_attn (through base_layer) and the layers without an adapter
    assert changed == {name for name in base if name.endswith((
        "c_attn.base_layer.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))}
    assert summary["weights_quantised"] == 8

    # the same model quantised whole (per channel: lora_B has only r = 4 inputs) rounds the adapter too
    whole = get_peft_model(tiny_gpt2(), LoraConfig(target_modules=["c_attn"], r=4, lora_alpha=8))
    lora_a = "base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight"
    assert torch.equal(dict(whole.named_parameters())[lora_a], adapter[lora_a])
    quantize_model(whole, QuantSpec(4, None, True))
    assert not torch.equal(dict(whole.named_parameters())[lora_a], adapter[lora_a])


def test_base_only_needs_a_lora_model():
    with pytest.raises(ValueError, match="no PEFT LoRA layers"):
        quantize_base_only(tiny_gpt2(), QuantSpec(8, 32, True))
