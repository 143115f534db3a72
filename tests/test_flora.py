"""FLoRA (paper Section 3.4): closed form of Eq. 4, EM for Eq. 3, PEFT integration and export."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from conftest import tiny_gpt_neo
from unlearnkit.adapters.fisher import FisherResult, empirical_fisher
from unlearnkit.adapters.flora.export import save_flora_adapter_for_original_base, save_flora_initial_adapter
from unlearnkit.adapters.flora.init import initialise_flora
from unlearnkit.adapters.flora.maths import (
    flora_factors,
    relative_importance,
    row_weights,
    weighted_low_rank,
    weighted_objective,
)
from unlearnkit.adapters.lora import attach_lora, merged_model
from unlearnkit.config import FloraOptions
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError

TARGETS = ["q_proj", "v_proj", "c_fc", "c_proj"]
LOGIT_ATOL = 1e-5  # tiny-model logits are O(0.1-1); float32 rounding of W_res + BA stays below ~1e-6


def _blocks(name: str, n: int = 4, t: int = 16, seed: int = 0) -> TokenBlocks:
    ids = torch.randint(0, 95, (n, t), generator=torch.Generator().manual_seed(seed))
    return TokenBlocks(ids, torch.ones_like(ids), name)


FORGET, RETAIN = _blocks("forget", seed=1), _blocks("retain", seed=2)


def _row_objective(w: torch.Tensor, weight: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> float:
    return float((w[:, None] * (weight - b @ a)).square().sum())  # Eq. 4, squared


def _train(model: PeftModel, steps: int = 3) -> None:
    """A few AdamW steps of gradient ascent on the forget set, so A, B move away from their init."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = -model(input_ids=FORGET.input_ids, labels=FORGET.labels()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


# ----------------------------------------------------------------------------- the maths


def test_relative_importance_and_row_weights() -> None:
    f_f = torch.tensor([[1.0, float("nan")], [float("inf"), 4.0]])
    f_r = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    rel = relative_importance(f_f, f_r, eps=0.0)
    assert torch.isfinite(rel).all()
    assert rel.tolist() == [[1.0, 0.0], [4.0, 4.0]]  # NaN -> 0, +inf -> largest finite value
    assert row_weights(rel).tolist() == pytest.approx([1.0, 8.0**0.5])  # rows = output features


def test_flora_factors_attain_the_optimum_of_the_row_weighted_objective() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 9, generator=gen)
    w = torch.rand(12, generator=gen) * 3 + 0.1
    rank = 3
    a, b = flora_factors(weight, w, rank)
    assert a.shape == (rank, 9) and b.shape == (12, rank)
    # Brute force: Eckart-Young on diag(w) W with a full SVD says the optimum is the tail energy.
    singular = torch.linalg.svdvals(w[:, None] * weight)
    optimum = float(singular[rank:].square().sum())
    value = _row_objective(w, weight, b, a)
    assert value == pytest.approx(optimum, rel=1e-4)
    u, s, vh = torch.linalg.svd(w[:, None] * weight, full_matrices=False)
    truncated = (u[:, :rank] * s[:rank]) @ vh[:rank] / w[:, None]
    torch.testing.assert_close(b @ a, truncated, atol=1e-5, rtol=1e-4)
    # No random rank-r candidate, nor any small perturbation of the solution, does better.
    for _ in range(200):
        rb, ra = torch.randn(12, rank, generator=gen), torch.randn(rank, 9, generator=gen)
        assert _row_objective(w, weight, rb, ra) >= value
        pb = b + 1e-2 * torch.randn(b.shape, generator=gen)
        pa = a + 1e-2 * torch.randn(a.shape, generator=gen)
        assert _row_objective(w, weight, pb, pa) >= value - 1e-6


def test_zero_row_weight_leaves_that_row_in_the_residual() -> None:
    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5, 1.0])
    a, b = flora_factors(weight, w, 2)
    assert torch.isfinite(b).all() and torch.all(b[1] == 0)


def test_uniform_weights_give_plain_svd_and_match_peft_pissa() -> None:
    rank, alpha = 4, 16
    # PEFT's own PiSSA on the same layer: scaling·B·A is the rank-r SVD of W.
    pissa = get_peft_model(tiny_gpt_neo(), LoraConfig(r=rank, lora_alpha=alpha, target_modules=["c_fc"],
                                                      init_lora_weights="pissa"))
    layer = pissa.get_submodule("base_model.model.transformer.h.0.mlp.c_fc")
    pissa_product = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    original = tiny_gpt_neo().transformer.h[0].mlp.c_fc.weight.detach()
    a, b = flora_factors(original, torch.ones(original.shape[0]), rank)
    u, s, vh = torch.linalg.svd(original, full_matrices=False)
    torch.testing.assert_close(b @ a, (u[:, :rank] * s[:rank]) @ vh[:rank], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b @ a, pissa_product.detach(), atol=1e-5, rtol=1e-4)

    # Through initialise_flora: a zero forget Fisher falls back to uniform weights, i.e. exactly PiSSA.
    model = attach_lora(tiny_gpt_neo(), ["c_fc"], rank=rank, alpha=alpha)
    names = [f"transformer.h.{i}.mlp.c_fc.weight" for i in range(2)]
    zeros = {n: torch.zeros(128, 32) for n in names}
    fisher = (FisherResult(zeros, 10, 1, dataset="forget"),
              FisherResult(dict(zeros), 10, 1, dataset="retain"))
    with pytest.warns(UserWarning, match="uniform row weights"):
        summary = initialise_flora(model, None, None, FloraOptions(), fisher=fisher)
    assert summary.fallback_layers == names
    ours = model.get_submodule("base_model.model.transformer.h.0.mlp.c_fc")
    for attr in ("lora_A", "lora_B"):
        torch.testing.assert_close(getattr(ours, attr)["default"].weight.abs(),
                                   getattr(layer, attr)["default"].weight.abs(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.get_base_layer().weight, layer.get_base_layer().weight,
                               atol=1e-5, rtol=1e-4)


def test_elementwise_em_is_never_worse_than_its_warm_start() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(20, 14, generator=gen)
    m = torch.rand(20, 14, generator=gen) ** 4 * 10 + 1e-3  # strongly non-row-constant importances
    rank = 3
    a0, b0 = flora_factors(weight, row_weights(m), rank)
    closed = weighted_objective(weight, m, b0 @ a0)
    a, b, history = weighted_low_rank(weight, m, rank, (a0, b0), iterations=60, tolerance=1e-9)
    final = weighted_objective(weight, m, b @ a)
    assert history[0] == pytest.approx(closed)
    assert final <= closed * (1 + 1e-6)
    assert final == pytest.approx(min(history), rel=1e-5)
    assert all(h2 <= h1 * (1 + 1e-5) for h1, h2 in zip(history, history[1:], strict=False))  # EM is monotone
    assert final < closed  # on genuinely element-wise weights EM improves on the row solution
    # Without a warm start it starts from the row solution itself.
    _, _, cold = weighted_low_rank(weight, m, rank, None, iterations=0)
    assert cold[0] == pytest.approx(closed, rel=1e-5)


# ----------------------------------------------------------------------------- PEFT integration


@pytest.mark.parametrize("solver", ["row", "elementwise"])
def test_logits_unchanged_after_initialise_flora(solver: str) -> None:
    model = attach_lora(tiny_gpt_neo(), TARGETS, rank=4, alpha=8)
    with torch.no_grad():
        before = model(input_ids=FORGET.input_ids).logits
    options = FloraOptions(solver=solver, em_iterations=5)
    summary = initialise_flora(model, FORGET, RETAIN, options)
    with torch.no_grad():
        after = model(input_ids=FORGET.input_ids).logits
    torch.testing.assert_close(after, before, atol=LOGIT_ATOL, rtol=0)
    # The adapter now carries a real share of each weight, so the init did something.
    assert all(layer.adapter_norm > 0.05 * layer.weight_norm for layer in summary.layers)
    data = json.loads(json.dumps(summary.to_dict()))
    assert len(data["layers"]) == 8 and data["fallback_layers"] == []
    assert data["timings"]["decomposition_s"] >= 0 and data["forget_tokens"] == 4 * 15
    if solver == "elementwise":
        for layer in data["layers"]:
            assert layer["em_objective"] <= layer["em_warm_start_objective"] * (1 + 1e-6)


def test_exported_adapter_reproduces_unlearned_logits_on_the_original_base(tmp_path) -> None:
    model = attach_lora(tiny_gpt_neo(), TARGETS, rank=4, alpha=8)
    summary = initialise_flora(model, FORGET, RETAIN, FloraOptions(estimator="per_sequence"))
    save_flora_initial_adapter(model, tmp_path / "initial")  # the PiSSA-style "initial model" on disk
    layer = model.get_submodule("base_model.model.transformer.h.0.mlp.c_fc")
    init_a = layer.lora_A["default"].weight.detach().clone()
    _train(model)
    assert not torch.allclose(layer.lora_A["default"].weight, init_a)
    x = torch.cat([FORGET.input_ids, RETAIN.input_ids])
    with torch.no_grad():
        unlearned = model(input_ids=x).logits
        original = tiny_gpt_neo()(input_ids=x).logits
    assert (unlearned - original).abs().max() > 1e-2  # training really changed the model

    for i, initial in enumerate([None, summary, tmp_path / "initial"]):
        out = tmp_path / f"export{i}"
        save_flora_adapter_for_original_base(model, out, initial=initial)
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["r"] == 8 and config["lora_alpha"] == 16  # rank 2r, same scaling
        reloaded = PeftModel.from_pretrained(tiny_gpt_neo(), out).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=x).logits, unlearned, atol=LOGIT_ATOL, rtol=0)
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    with torch.no_grad():
        merged = merged_model(model)
        torch.testing.assert_close(merged(input_ids=x).logits, unlearned, atol=LOGIT_ATOL, rtol=0)


def test_gpt2_conv1d_orientation() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2() -> GPT2LMHeadModel:
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=4, n_positions=64)
        return GPT2LMHeadModel(config).eval()

    model = attach_lora(gpt2(), ["c_attn", "c_fc"], rank=4)
    x = FORGET.input_ids
    with torch.no_grad():
        before = model(input_ids=x).logits
    summary = initialise_flora(model, FORGET, RETAIN)
    shapes = {layer.name: layer.shape for layer in summary.layers}
    assert shapes["transformer.h.0.attn.c_attn.weight"] == [96, 32]  # reported as [out, in]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, before, atol=LOGIT_ATOL, rtol=0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("retain", [None, TokenBlocks(torch.zeros(0, 16, dtype=torch.long),
                                                      torch.zeros(0, 16, dtype=torch.long), "retain")])
def test_missing_or_empty_retain_set_is_a_user_error(retain: TokenBlocks | None) -> None:
    model = attach_lora(tiny_gpt_neo(), TARGETS, rank=2)
    with pytest.raises(UnlearnkitError, match="non-empty retain set"):
        initialise_flora(model, FORGET, retain)


def test_initialise_without_lora_layers_is_a_user_error() -> None:
    model = get_peft_model(tiny_gpt_neo(), LoraConfig(r=2, target_modules=["q_proj"]))
    model.base_model.model.transformer.h[0].attn.attention.q_proj.lora_A.pop("default")
    model.base_model.model.transformer.h[1].attn.attention.q_proj.lora_A.pop("default")
    with pytest.raises(UnlearnkitError, match="no LoRA layers"):
        initialise_flora(model, FORGET, RETAIN)


def test_fisher_cache_is_reused_and_checked_against_the_model(tmp_path) -> None:
    options = FloraOptions(fisher_path=str(tmp_path / "fisher"))
    first = initialise_flora(attach_lora(tiny_gpt_neo(), ["q_proj"], rank=2), FORGET, RETAIN, options)
    assert (tmp_path / "fisher" / "forget.safetensors").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # same weights: no fingerprint warning
        second = initialise_flora(attach_lora(tiny_gpt_neo(), ["q_proj"], rank=2), None, None, options)
    assert [s.objective for s in second.layers] == pytest.approx([s.objective for s in first.layers])
    cached = (tmp_path / "fisher" / "forget.safetensors").read_bytes()
    with pytest.warns(UserWarning, match="other forget sequences"):  # a cache of another forget set is not reused
        other = initialise_flora(attach_lora(tiny_gpt_neo(), ["q_proj"], rank=2), RETAIN, RETAIN, options)
    assert [s.objective for s in other.layers] != pytest.approx([s.objective for s in first.layers])
    assert (tmp_path / "fisher" / "forget.safetensors").read_bytes() == cached  # and left as it was
    with pytest.raises(UnlearnkitError, match="does not match"):  # cached names differ from the targets
        initialise_flora(attach_lora(tiny_gpt_neo(), ["q_proj", "v_proj"], rank=2), FORGET, RETAIN, options)
    with pytest.raises(UnlearnkitError, match="shape"):  # same names, other shapes
        initialise_flora(attach_lora(tiny_gpt_neo(hidden=64), ["q_proj"], rank=2), FORGET, RETAIN, options)


def test_fisher_passed_in_must_cover_the_lora_layers() -> None:
    model = attach_lora(tiny_gpt_neo(), ["q_proj", "v_proj"], rank=2)
    partial = empirical_fisher(tiny_gpt_neo(), ["q_proj"], FORGET)
    with pytest.raises(UnlearnkitError, match="lacks weights"):
        initialise_flora(model, FORGET, RETAIN, fisher=(partial, partial))


def test_retain_fisher_sample_is_seeded_and_sized_like_the_forget_set():
    from unlearnkit.adapters.flora.init import fisher_retain_sample
    from unlearnkit.data.blocks import TokenBlocks

    retain = TokenBlocks(torch.arange(100 * 4).reshape(100, 4), torch.ones(100, 4, dtype=torch.long), "retain")
    default = fisher_retain_sample(retain, 8, FloraOptions(), seed=1)
    assert len(default) == 8 and len({tuple(r) for r in default.input_ids.tolist()}) == 8
    assert torch.equal(default.input_ids, fisher_retain_sample(retain, 8, FloraOptions(), seed=1).input_ids)
    assert not torch.equal(default.input_ids, fisher_retain_sample(retain, 8, FloraOptions(), seed=2).input_ids)
    assert len(fisher_retain_sample(retain, 8, FloraOptions(retain_sequences=20), seed=1)) == 20
    assert len(fisher_retain_sample(retain, 8, FloraOptions(retain_sequences=None), seed=1)) == 100
    assert len(fisher_retain_sample(retain, 8, FloraOptions(retain_sequences=500), seed=1)) == 100


def test_auto_svd_is_exact_on_small_layers_and_randomized_and_close_on_large_ones():
    from unlearnkit.adapters.flora.maths import AUTO_RANDOMIZED_MIN_DIM

    gen = torch.Generator().manual_seed(7)
    small, weights = torch.randn(64, 48, generator=gen), torch.rand(64, generator=gen)
    assert all(torch.equal(x, y) for x, y in zip(flora_factors(small, weights, 4, "auto"),
                                                 flora_factors(small, weights, 4, "exact"), strict=True))
    size = AUTO_RANDOMIZED_MIN_DIM
    # a decaying spectrum, like trained weights
    large = torch.randn(size, 16, generator=gen) @ torch.randn(16, size, generator=gen) + 0.1 * torch.randn(
        size, size, generator=gen)
    row = torch.rand(size, generator=gen) ** 4
    torch.manual_seed(0)
    auto = flora_factors(large, row, 8, "auto")
    torch.manual_seed(0)
    randomized = flora_factors(large, row, 8, "randomized")
    assert all(torch.equal(x, y) for x, y in zip(auto, randomized, strict=True))
    exact = flora_factors(large, row, 8, "exact")
    weights = (row / row.max()).double()

    def objective(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((weights[:, None] * (large.double() - b.double() @ a.double())).square().sum())

    # Eckart-Young in float64: the best rank-8 error of the row-weighted matrix is its tail of squared singular
    # values. The exact SVD reaches it up to float32 rounding of the factors; the randomized one within 1 %.
    # (Which of the two is lower is rounding noise: they are one float32 ulp apart.)
    optimum = float(torch.linalg.svdvals(weights[:, None] * large.double())[8:].square().sum())
    assert objective(*exact) <= optimum * (1 + 1e-6)
    assert objective(*auto) <= 1.01 * optimum
