"""LoRA through PEFT: attach (with rank validation), merge, save/reload."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from conftest import tiny_gpt_neo
from unlearnkit.adapters.lora import attach_lora, lora_target_layers, merged_model, save_lora_adapter
from unlearnkit.errors import UnlearnkitError

TARGETS = ["q_proj", "v_proj", "c_fc", "c_proj"]


def _ids(n: int = 3, t: int = 16) -> torch.Tensor:
    return torch.randint(0, 95, (n, t), generator=torch.Generator().manual_seed(1))


def _randomise_lora_b(model: PeftModel) -> None:
    # Fresh LoRA has B = 0 (a no-op); give B values so merge and save are actually exercised.
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)


def test_attach_wraps_exactly_the_target_modules() -> None:
    model = attach_lora(tiny_gpt_neo(), TARGETS, rank=4, alpha=8)
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
               if isinstance(m, LoraLayer)}
    expected = {f"transformer.h.{i}.{s}" for i in range(2) for s in
                ("attn.attention.q_proj", "attn.attention.v_proj", "mlp.c_fc", "mlp.c_proj")}
    assert wrapped == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    layer = model.get_submodule("base_model.model.transformer.h.0.mlp.c_fc")
    assert layer.scaling["default"] == pytest.approx(8 / 4)


@pytest.mark.parametrize("rank", [0, 33])
def test_bad_rank_is_a_user_error_naming_the_layer(rank: int) -> None:
    with pytest.raises(UnlearnkitError) as err:
        attach_lora(tiny_gpt_neo(), TARGETS, rank=rank)
    if rank > 0:
        message = str(err.value)
        assert "transformer.h.0.attn.attention.v_proj" in message and "[32, 32]" in message
        assert "at most 32" in message


def test_unknown_target_module_is_a_user_error() -> None:
    with pytest.raises(UnlearnkitError, match="query_key_value"):
        attach_lora(tiny_gpt_neo(), ["query_key_value"], rank=2)


def test_conv1d_shapes_are_reported_out_in() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=4, n_positions=64))
    layers = lora_target_layers(model, ["c_attn", "c_fc"])
    assert layers["transformer.h.0.attn.c_attn"] == (96, 32)
    assert layers["transformer.h.0.mlp.c_fc"] == (128, 32)
    with pytest.raises(UnlearnkitError, match="at most 32"):
        attach_lora(model, ["c_attn"], rank=40)


def test_merged_model_has_the_same_logits() -> None:
    model = attach_lora(tiny_gpt_neo(), TARGETS, rank=4).eval()
    _randomise_lora_b(model)
    x = _ids()
    with torch.no_grad():
        expected = model(input_ids=x).logits
        merged = merged_model(model)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=x).logits, expected, atol=1e-5, rtol=1e-5)


def test_saved_adapter_reloads_with_the_same_logits(tmp_path) -> None:
    model = attach_lora(tiny_gpt_neo(), TARGETS, rank=4).eval()
    _randomise_lora_b(model)
    x = _ids()
    save_lora_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(tiny_gpt_neo(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, model(input_ids=x).logits,
                                   atol=1e-6, rtol=1e-6)


def _one_step(adapter: str, checkpointing: bool):
    from unlearnkit.modeling import enable_gradient_checkpointing, resolve_target_modules
    from unlearnkit.objectives import lm_loss

    model = tiny_gpt_neo(layers=2)
    if adapter == "lora":
        model = attach_lora(model, resolve_target_modules(model, ["q", "v", "ffn"]), rank=4, alpha=8)
        with torch.no_grad():  # B = 0 at start would leave A without gradient; any B shows the whole flow
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    block = next(m for n, m in model.named_modules() if n.endswith("transformer.h.0.attn"))
    block_runs: list[int] = []
    block.register_forward_hook(lambda *_: block_runs.append(1))
    ids = torch.randint(0, 90, (2, 16), generator=torch.Generator().manual_seed(3))
    loss = lm_loss(model(input_ids=ids).logits, ids)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(block_runs) == (2 if checkpointing else 1)  # checkpointing recomputes the block in backward
    return float(loss.detach()), grads


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_trains_the_adapter(adapter):
    loss, grads = _one_step(adapter, checkpointing=False)
    loss_ckpt, grads_ckpt = _one_step(adapter, checkpointing=True)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and all(g is not None for g in grads_ckpt.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    if adapter == "lora":
        assert all(float(g.abs().sum()) > 0 for n, g in grads_ckpt.items() if "lora_" in n)
