"""FLOPs of a run (the paper's Figure 2 axis), counted by torch's FlopCounterMode, against the analytic counts.

A training token costs 2 FLOPs per weight that multiplies it forward and 4 backward (the gradient for the
input and for the weight): 6 N per token for full fine-tuning. A frozen weight needs no weight gradient, so
with LoRA it is 4 N per token plus 6 per adapter weight (Hu et al. 2021; Kaplan et al. 2020). N counts the
weights of matrix products: every linear layer and the output layer, not the embedding lookups. The analytic
counts leave out the attention scores (4 x positions x hidden per token and layer forward: 8 % of N here) and
the first block's input gradients that nothing needs; the tolerance is 10 %.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_gpt_neo
from unlearnkit.adapters.lora import attach_lora
from unlearnkit.config import MethodConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.flops import FlopTally, flop_counter, thin_svd_flops
from unlearnkit.methods import build_method

ROWS, LENGTH, VOCAB, HIDDEN, LAYERS = 2, 32, 256, 64, 4


def _matmul_weights(model: torch.nn.Module) -> int:
    """Weights of the linear layers and the output layer (GPT-Neo ties it to the embedding: counted once here)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return linear


def _ihl_step(model: torch.nn.Module, tally: FlopTally) -> int:
    """One IHL step (a forget and a retain batch) counted as ``tally``'s train sample; returns its tokens."""
    generator = torch.Generator().manual_seed(0)
    forget, retain = (torch.randint(VOCAB, (ROWS, LENGTH), generator=generator) for _ in range(2))
    tokens = 2 * ROWS * LENGTH
    with tally.count_sample("train", tokens):
        loss, _ = build_method(MethodConfig(name="ihl")).step_loss(
            model, TokenBlocks(forget, torch.ones_like(forget), "forget"),
            TokenBlocks(retain, torch.ones_like(retain), "retain"))
        loss.backward()
    return tokens


def test_full_fine_tuning_costs_six_flops_per_weight_and_token():
    model = tiny_gpt_neo(vocab_size=VOCAB, layers=LAYERS, hidden=HIDDEN).train()
    tally = FlopTally()
    tokens = _ihl_step(model, tally)
    counted, analytic = tally.sample["train"][0], 6 * _matmul_weights(model) * tokens
    assert counted == pytest.approx(analytic, rel=0.10)
    assert counted > analytic  # the attention scores come on top, never below


def test_lora_needs_no_gradient_of_the_frozen_weights():
    model = tiny_gpt_neo(vocab_size=VOCAB, layers=LAYERS, hidden=HIDDEN).train()
    frozen = _matmul_weights(model)
    model = attach_lora(model, ["q_proj", "v_proj", "c_fc", "c_proj"], rank=4, alpha=8, dropout=0.0)
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tally = FlopTally()
    tokens = _ihl_step(model, tally)
    counted = tally.sample["train"][0]
    assert counted == pytest.approx((4 * frozen + 6 * adapter) * tokens, rel=0.10)
    assert counted < 0.8 * 6 * frozen * tokens  # clearly below full fine-tuning's count


def test_a_phase_is_scaled_from_its_counted_step_by_the_tokens():
    tally = FlopTally()
    with tally.count_sample("train", tokens=100):
        torch.ones(8, 16) @ torch.ones(16, 4)  # 2 x 8 x 16 x 4 = 1024 FLOPs
    tally.scale("train", tokens=250)
    assert tally.flops["train"] == 1024 / 100 * 250
    with tally.count("criterion"):
        torch.ones(4, 4) @ torch.ones(4, 4)
    with tally.count("criterion"):
        torch.ones(4, 4) @ torch.ones(4, 4)
    assert tally.flops["criterion"] == 2 * 128
    tally.scale("never counted", tokens=10)
    assert "never counted" not in tally.flops


def test_an_svd_is_counted_by_golub_and_van_loans_formula():
    with flop_counter() as counter:
        torch.linalg.svd(torch.randn(48, 20), full_matrices=False)
        torch.linalg.svd(torch.randn(20, 48), full_matrices=False)  # the same cost transposed
    assert counter.total == 2 * (6 * 48 * 20**2 + 20 * 20**3)
    assert thin_svd_flops((3, 10, 10)) == 3 * (6 * 1000 + 20 * 1000)


def test_the_count_is_torchs_flop_counter_modes_count():
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_gpt_neo(vocab_size=VOCAB, layers=LAYERS, hidden=HIDDEN).train()
    ours = FlopTally()
    _ihl_step(model, ours)
    with FlopCounterMode(display=False) as torchs:
        _ihl_step(model, FlopTally())
    assert ours.sample["train"][0] == torchs.get_total_flops() > 0
