"""Each loss against a direct formula; IHL's gradient against the closed form of Appendix A."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_gpt_neo
from unlearnkit.config import MethodConfig, load_config
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods import build_method
from unlearnkit.objectives import gradient_ascent_loss, inverted_hinge_loss, lm_loss


def _example(seed: int = 0, batch: int = 2, length: int = 5, vocab: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(vocab, (batch, length), generator=g)
    if batch > 1:
        labels[1, 3:] = -100  # padding
    return logits, labels


def _direct_terms(logits: torch.Tensor, labels: torch.Tensor):
    """Per-token (nll, ihl) computed with explicit loops over positions and vocabulary."""
    nll, ihl = [], []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            row = logits[b, t]
            z = sum(math.exp(float(v)) for v in row)
            p = [math.exp(float(v)) / z for v in row]
            nll.append(-math.log(p[target]))
            best_other = max(p[v] for v in range(len(p)) if v != target)
            ihl.append(max(0.0, 1.0 + p[target] - best_other))
    return nll, ihl


def test_lm_and_ga_losses_match_direct_formula():
    logits, labels = _example()
    nll, _ = _direct_terms(logits, labels)
    assert lm_loss(logits, labels).item() == pytest.approx(sum(nll) / len(nll), rel=1e-9)
    assert gradient_ascent_loss(logits, labels).item() == pytest.approx(-sum(nll) / len(nll), rel=1e-9)


def test_ihl_value_matches_direct_formula():
    logits, labels = _example(seed=1)
    _, ihl = _direct_terms(logits, labels)
    assert inverted_hinge_loss(logits, labels).item() == pytest.approx(sum(ihl) / len(ihl), rel=1e-9)


def test_ihl_value_when_true_token_is_the_top_prediction():
    # p(x_t) is the maximum, so the best *other* token is the runner-up.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [5.0, 1.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, 0]])
    p = torch.softmax(logits[0, 0], -1)
    expected = 1 + p[0] - p[1]
    assert inverted_hinge_loss(logits, labels).item() == pytest.approx(float(expected))


def test_ihl_gradient_matches_appendix_a_three_cases():
    logits, labels = _example(seed=2, batch=1, length=6, vocab=9)
    logits.requires_grad_(True)
    inverted_hinge_loss(logits, labels).backward()
    grad = logits.grad
    count = int((labels[:, 1:] != -100).sum())
    for t in range(labels.shape[1] - 1):
        target = int(labels[0, t + 1])
        p = torch.softmax(logits[0, t].detach(), -1)
        others = p.clone()
        others[target] = -1
        v_star = int(others.argmax())
        p_true, p_star = p[target], p[v_star]
        if 1 + p_true - p_star <= 0:
            expected = torch.zeros_like(p)
        else:
            expected = p * (p_star - p_true)  # v ≠ x_t, v ≠ v*
            expected[target] = p_true * (p_star - p_true + 1)
            expected[v_star] = p_star * (p_star - p_true - 1)
        torch.testing.assert_close(grad[0, t] * count, expected, rtol=1e-9, atol=1e-12)
    # the last position predicts nothing and receives no gradient
    assert torch.count_nonzero(grad[0, -1]) == 0


def test_ihl_is_bounded_and_vanishes_when_forgotten():
    # 1 + p(x_t) - p(v*) >= 0 always; when another token takes all the mass, loss and gradient vanish
    logits = torch.tensor([[[0.0, 50.0, 0.0], [0.0, 50.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 0]])
    loss = inverted_hinge_loss(logits, labels)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert logits.grad.abs().max() < 1e-15
    worst = torch.tensor([[[0.0, 0.0], [50.0, 0.0]]], dtype=torch.float64)
    assert inverted_hinge_loss(worst, torch.tensor([[0, 0]])).item() <= 2.0


def test_ihl_ignores_all_masked_batch():
    logits, _ = _example()
    labels = torch.full((2, 5), -100)
    assert inverted_hinge_loss(logits, labels).item() == 0.0


def test_methods_combine_forget_and_retain_terms():
    model = tiny_gpt_neo().double().eval()
    generator = torch.Generator().manual_seed(3)
    forget, retain = (TokenBlocks.from_lists(torch.randint(0, 95, (3, 12), generator=generator).tolist(), name,
                                             seq_len=12) for name in ("forget", "retain"))

    def logits(blocks):
        return model(input_ids=blocks.input_ids, attention_mask=blocks.attention_mask).logits

    ihl = build_method(MethodConfig(name="ihl", retain_weight=0.5))
    total, parts = ihl.step_loss(model, forget, retain)
    expected = inverted_hinge_loss(logits(forget), forget.labels()) + 0.5 * lm_loss(logits(retain), retain.labels())
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    assert set(parts) == {"forget_loss", "retain_loss", "loss"}
    total, parts = build_method(MethodConfig(name="ga")).step_loss(model, forget, None)
    assert total.item() == pytest.approx(-lm_loss(logits(forget), forget.labels()).item(), rel=1e-12)
    assert "retain_loss" not in parts
    assert build_method(MethodConfig(name="gd")).uses_retain and not build_method(MethodConfig(name="ga")).uses_retain


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnlearnkitError, match='Unknown method "ihll".*ga, gd, ihl.*Did you mean "ihl"'):
        load_config(None, ["method.name=ihll"])


def test_ihl_on_bf16_logits_is_finite_and_matches_fp32():
    """Mixed-precision training hands the loss bf16 logits over a large vocabulary with large magnitudes."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 9, 50257, generator=gen) * 30
    labels = torch.randint(0, 50257, (2, 9), generator=gen)
    labels[0, -3:] = -100
    half = logits.to(torch.bfloat16).requires_grad_(True)
    loss = inverted_hinge_loss(half, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(half.grad.float()).all()
    # the same bf16 values in fp32 give the same loss: the upcast loses nothing
    assert float(loss.detach()) == pytest.approx(float(inverted_hinge_loss(half.detach().float(), labels)), abs=1e-6)
    # and bf16 rounding of the logits moves the loss by no more than rounding would
    assert float(loss.detach()) == pytest.approx(float(inverted_hinge_loss(logits, labels)), abs=2e-2)


def test_ihl_closed_form_gradient_equals_autograd_of_the_formula():
    """The hand-written backward against autograd through the plain definition, in float64, with masked
    tokens, hinges that are inactive (forgotten tokens) and tokens whose top-1 is the true token."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 7, 11, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[1, 4:] = -100
    labels[0, 1] = int(logits[0, 0].argmax())  # the model's top-1 is the true token
    logits[2, 2] = -5.0
    logits[2, 2, 9] = 20.0  # a token the model has firmly forgotten for another: p_other ~ 1, hinge inactive
    labels[2, 3] = 0

    def plain(z: torch.Tensor) -> torch.Tensor:
        z, y = z[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1)
        keep = y != -100
        p = torch.softmax(z[keep], dim=-1)
        true = p.gather(1, y[keep][:, None]).squeeze(1)
        other = p.scatter(1, y[keep][:, None], -1.0).max(dim=-1).values
        return torch.clamp(1 + true - other, min=0).mean()

    ours_input, plain_input = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours, reference = inverted_hinge_loss(ours_input, labels), plain(plain_input)
    ours.backward()
    reference.backward()
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-12)
    assert torch.allclose(ours_input.grad, plain_input.grad, atol=1e-12)
