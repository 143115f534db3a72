"""Today's standard baselines against direct computations on hand-made logits: NPO, SimNPO and the KL retain
term (values with explicit loops over rows, positions and vocabulary; gradients with autograd of those)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_gpt_neo
from unlearnkit.config import MethodConfig, load_config
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.run_sets import RunData
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods import MethodSetup, build_method
from unlearnkit.objectives import kl_from_reference, npo_loss, simnpo_loss, token_nll


def _example(seed: int = 0, batch: int = 3, length: int = 6, vocab: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    labels = torch.randint(vocab, (batch, length), generator=g)
    labels[1, 4:] = -100  # a padded row: its sequence is shorter
    return logits, labels


def _direct_sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list, list[int]]:
    """Sum of log p(x_t+1 | x_≤t) per row, and how many tokens each row predicts, by explicit loops (autograd
    through torch scalars, so the gradient of the direct formula can be compared too)."""
    sums, counts = [], []
    for b in range(logits.shape[0]):
        total, count = logits.new_zeros(()), 0
        for t in range(logits.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            row = logits[b, t]
            total = total + row[target] - torch.log(sum(torch.exp(v) for v in row))
            count += 1
        sums.append(total)
        counts.append(count)
    return sums, counts


def _log_sigmoid(x):
    return -torch.log1p(torch.exp(-x))


def test_npo_is_two_over_beta_log_two_when_the_model_is_its_reference():
    logits, labels = _example()
    reference = torch.stack(_direct_sequence_logprobs(logits, labels)[0]).detach()
    for beta in (0.1, 1.0):
        assert npo_loss(logits, labels, reference, beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_npo_value_and_gradient_match_the_direct_formula(beta):
    logits, labels = _example(seed=1)
    reference = torch.tensor([-9.0, -4.5, -12.0], dtype=torch.float64)
    ours = npo_loss(logits, labels, reference, beta)
    sums, _ = _direct_sequence_logprobs(logits, labels)
    direct = sum(-(2 / beta) * _log_sigmoid(-beta * (s - r)) for s, r in zip(sums, reference, strict=True)) / 3
    assert float(ours) == pytest.approx(float(direct), rel=1e-12)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    (direct_grad,) = torch.autograd.grad(direct, logits)
    torch.testing.assert_close(ours_grad, direct_grad, rtol=1e-10, atol=1e-12)
    # descending it lowers the forget rows' likelihood: the gradient on each true token's logit is positive
    assert float(ours_grad[0, 0, labels[0, 1]]) > 0


@pytest.mark.parametrize(("beta", "gamma"), [(2.5, 0.0), (1.0, 0.5)])
def test_simnpo_value_and_gradient_match_the_direct_formula(beta, gamma):
    logits, labels = _example(seed=2)
    ours = simnpo_loss(logits, labels, beta=beta, gamma=gamma)
    sums, counts = _direct_sequence_logprobs(logits, labels)
    assert counts == [5, 3, 5]  # the padded row is normalised by its own length
    direct = sum(-(2 / beta) * _log_sigmoid(-(beta / n) * s - gamma) for s, n in zip(sums, counts, strict=True)) / 3
    assert float(ours) == pytest.approx(float(direct), rel=1e-12)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    (direct_grad,) = torch.autograd.grad(direct, logits)
    torch.testing.assert_close(ours_grad, direct_grad, rtol=1e-10, atol=1e-12)


def test_kl_retain_is_zero_for_the_unchanged_model_and_the_direct_kl_otherwise():
    logits, labels = _example(seed=3)
    assert float(kl_from_reference(logits, logits.detach(), labels)) == pytest.approx(0.0, abs=1e-12)
    reference = logits.detach() + torch.randn_like(logits) * 0.5
    ours = kl_from_reference(logits, reference, labels)
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if int(labels[b, t + 1]) == -100:
                continue
            p_ref, p = torch.softmax(reference[b, t], -1), torch.softmax(logits[b, t].detach(), -1)
            terms.append(float((p_ref * (p_ref.log() - p.log())).sum()))
    assert float(ours) == pytest.approx(sum(terms) / len(terms), rel=1e-10) and float(ours) > 0


def test_methods_take_their_options_and_the_kl_retain_term():
    model = tiny_gpt_neo().double().eval()
    generator = torch.Generator().manual_seed(4)
    forget, retain = (TokenBlocks.from_lists(torch.randint(0, 95, (3, 12), generator=generator).tolist(), name,
                                             seq_len=12) for name in ("forget", "retain"))
    npo = build_method(MethodConfig(name="npo", beta=0.5, retain_kind="kl", retain_weight=2.0))
    assert npo.options.beta == 0.5 and MethodConfig(name="simnpo").options().model_dump() == {"beta": 2.5,
                                                                                             "gamma": 0.0}
    npo.prepare(MethodSetup(model, RunData(forget, retain), device=None, seed=0, eval_batch_size=2))
    total, parts = npo.step_loss(model, forget, retain)
    assert parts["retain_loss"] == pytest.approx(0.0, abs=1e-12)  # KL of the model from its frozen copy
    logits = model(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits
    reference = -token_nll(logits, forget.labels()).sum(dim=1)  # the model before unlearning: itself
    assert float(total) == pytest.approx(float(npo_loss(logits, forget.labels(), reference, 0.5)), rel=1e-12)
    assert float(total) == pytest.approx(2 / 0.5 * math.log(2), rel=1e-9)  # equal models: (2/β) log 2


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.name=ihl", "method.beta=0.5"], r"method.beta is not an option of ihl \(its options: none\)"),
    (["method.name=npo", "method.gamma=0.5"], r"method.gamma is not an option of npo \(its options: method.beta\)"),
    (["method.name=ga", "method.retain_kind=kl"], "no retain term"),
    (["method.name=rmu", "method.retain_kind=kl"], "has a retain term of its own"),
    (["method.name=npo", "method.beta=0"], "greater than 0"),
])
def test_options_that_do_not_fit_the_method_are_refused(overrides, message):
    with pytest.raises(UnlearnkitError, match=message):
        load_config(None, overrides)
    assert load_config(None, ["method.name=simnpo", "method.gamma=0.25", "method.retain_kind=kl"]
                       ).method.options().model_dump() == {"beta": 2.5, "gamma": 0.25}


@pytest.mark.integration
@pytest.mark.parametrize("adapter", [pytest.param("none", marks=pytest.mark.slow), "flora"])
def test_a_run_compares_with_the_model_before_unlearning(memorized_model_dir, tmp_path, adapter):
    """With a learning rate too small to move the model, NPO's loss is (2/β) log 2 on every step and the KL
    retain term 0: the reference is the model as loaded (before FLoRA's initialisation, too), row by row."""
    from conftest import memorised_run_config
    from unlearnkit.loop import run_unlearning

    config = memorised_run_config(memorized_model_dir, tmp_path / "run", "npo", adapter, 1e-12, [
        "method.retain_kind=kl", "train.epochs=2", "eval.audit=false", "adapter.dropout=0",
        "train.max_grad_norm=null"])
    result = run_unlearning(config, quiet=True)
    for epoch in result.state.history:
        assert epoch["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)
        assert epoch["retain_loss"] == pytest.approx(0.0, abs=1e-5)
    assert result.after["forget"]["ma"] == pytest.approx(result.before["forget"]["ma"])


@pytest.mark.integration
@pytest.mark.parametrize("method", ["npo", pytest.param("simnpo", marks=pytest.mark.slow)])
def test_the_new_baselines_unlearn_the_memorised_rows(memorized_model_dir, tmp_path, method):
    from conftest import memorised_run_config
    from unlearnkit.loop import run_unlearning

    result = run_unlearning(memorised_run_config(memorized_model_dir, tmp_path / "run", method, "lora", 1e-1,
                                                 ["eval.audit=false"]), quiet=True)
    assert result.state.criterion_met, result.state.history
    assert result.after["forget"]["ma"] <= result.thresholds.ma < result.before["forget"]["ma"]
