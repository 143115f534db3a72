"""RMU (unlearnkit.methods.rmu) against a direct computation of Li et al.'s loss on a tiny model — hidden states
taken by a forward hook on the layer itself, the target direction drawn afresh, explicit loops over rows and
positions — and end to end: which weights it trains, with full fine-tuning and with FLoRA."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import memorised_run_config, tiny_gpt_neo
from unlearnkit.config import MethodConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.run_sets import RunData
from unlearnkit.methods import MethodSetup, build_method


def _layer_output(model: torch.nn.Module, layer: int, blocks: TokenBlocks) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = model.transformer.h[layer].register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
    try:
        model(input_ids=blocks.input_ids, attention_mask=blocks.attention_mask)
    finally:
        handle.remove()
    return captured[0]


def test_the_rmu_loss_is_li_et_al_s_on_the_steered_layer():
    frozen = tiny_gpt_neo(layers=4).double().eval()
    model = copy.deepcopy(frozen)
    generator = torch.Generator().manual_seed(7)
    rows = [torch.randint(0, 95, (n,), generator=generator).tolist() for n in (12, 7, 10)]
    forget = TokenBlocks.from_lists(rows, "forget", seq_len=12)
    retain = TokenBlocks.from_lists(rows[::-1], "retain", seq_len=12)
    method = build_method(MethodConfig(name="rmu", layer=1, steering_coeff=2.0, alpha=10.0))
    method.prepare(MethodSetup(model, RunData(forget, retain), device=None, seed=3, eval_batch_size=2))
    with torch.no_grad():  # the model being unlearned has moved away from its frozen copy
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    total, parts = method.step_loss(model, forget, retain)

    direction = torch.rand(32, generator=torch.Generator().manual_seed(3), dtype=torch.float32)  # uniform [0, 1)^d
    target = (direction / direction.norm() * 2.0).double()  # c·u, drawn and scaled in float32 as the method does
    h_forget, h_retain, h_frozen = (_layer_output(m, 1, b) for m, b in ((model, forget), (model, retain),
                                                                        (frozen, retain)))
    forget_terms, retain_terms = [], []
    for b, row in enumerate(rows):  # each row's positions that predict a token: all but its last
        for t in range(len(row) - 1):
            forget_terms.append(float(((h_forget[b, t] - target) ** 2).sum()) / 32)
    for b, row in enumerate(rows[::-1]):
        for t in range(len(row) - 1):
            retain_terms.append(float(((h_retain[b, t] - h_frozen[b, t]) ** 2).sum()) / 32)
    forget_loss, retain_loss = sum(forget_terms) / len(forget_terms), 10.0 * sum(retain_terms) / len(retain_terms)
    assert parts["forget_loss"] == pytest.approx(forget_loss, rel=1e-9)
    assert parts["retain_loss"] == pytest.approx(retain_loss, rel=1e-9)  # α inside the term, retain_weight 1
    assert float(total) == pytest.approx(forget_loss + retain_loss, rel=1e-9)


@pytest.mark.parametrize(("adapter", "lr"), [("none", 5e-2), ("flora", 1e-1)])
def test_rmu_trains_only_the_steered_layers_and_forgets(memorized_model_dir, tmp_path, adapter, lr):
    """On the memorised 2-layer model RMU steers layer 0 (7/32 of the depth, rounded) and trains layers ℓ−2..ℓ:
    with full fine-tuning only layer 0's MLP changes; with FLoRA the adapter sits on layer 0's modules only. The
    retain weight α is scaled down to the tiny model's activations (the authors' 1200 is for 7B models)."""
    from transformers import AutoModelForCausalLM

    from unlearnkit.loop import run_unlearning

    config = memorised_run_config(memorized_model_dir, tmp_path / "run", "rmu", adapter, lr,
                                  ["adapter.dropout=0", "eval.audit=false", "train.epochs=15", "method.alpha=1"])
    result = run_unlearning(config, quiet=True)
    if adapter == "flora":
        assert result.state.criterion_met, result.state.stop_reason
    else:  # one MLP of a 2-layer model: MA falls far (0.97 to about 0.1 here), not to the held-out level
        assert min(r["forget_ma"] for r in result.state.history) < 0.5 * result.before["forget"]["ma"]
    if adapter == "none":
        original = AutoModelForCausalLM.from_pretrained(memorized_model_dir)
        before = dict(original.named_parameters())
        changed = {name for name, p in result.model.named_parameters() if not torch.equal(p, before[name])}
        assert changed and all(name.startswith("transformer.h.0.mlp.") for name in changed), changed
    else:
        assert result.target_modules and all(".h.0." in name for name in result.target_modules)
