"""Plain LoRA through PEFT: the ``lora`` adapter, and attach, merge, save (the adapter FLoRA re-initialises).

Everything here is a thin, validated wrapper over PEFT so that outputs are standard PEFT
adapters that any PEFT user can load with ``PeftModel.from_pretrained``. torch, PEFT and transformers are
imported inside the functions: a config that names this adapter is read without them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearnkit.adapters.base import Adapter
from unlearnkit.errors import UnlearnkitError
from unlearnkit.targets import matches_target

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel


class LoraAdapter(Adapter):
    """LoRA (Hu et al.): ``W + (alpha / r) · B A`` with ``B = 0`` at start, on the selected modules."""

    description = "LoRA on adapter.modules (rank, alpha, dropout), through PEFT"
    label = "LoRA"
    paper_lr = 2e-4

    def attach(self, model: Any, method: Any) -> tuple[Any, list[str]]:
        from unlearnkit.modeling import resolve_target_modules

        targets = [m for m in resolve_target_modules(model, self.config.modules) if method.trains(m, adapter=True)]
        if not targets:
            raise UnlearnkitError(f"adapter.modules select no module that method {method.name} trains; name "
                                  "modules in the layers it trains.")
        # LoRA layers start as a no-op (B = 0): attached before evaluating, they change no output
        return attach_lora(model, targets, rank=self.config.rank, alpha=self.config.alpha,
                           dropout=self.config.dropout), targets

    def export(self, model: Any, directory: Path) -> None:
        save_lora_adapter(model, directory)


ADAPTER = LoraAdapter


def lora_target_layers(model: torch.nn.Module, target_modules: list[str]) -> dict[str, tuple[int, int]]:
    """``{module name: (out_features, in_features)}`` for every layer PEFT would wrap.

    GPT-2's ``Conv1D`` stores its weight as ``[in, out]``; the returned shape is always
    ``(out, in)`` as for ``nn.Linear``.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    layers: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if not any(matches_target(name, t) for t in target_modules):
            continue
        if isinstance(module, Conv1D):
            in_f, out_f = module.weight.shape
            layers[name] = (int(out_f), int(in_f))
        elif isinstance(module, torch.nn.Linear):
            layers[name] = (module.out_features, module.in_features)
        elif isinstance(module, torch.nn.Embedding):
            layers[name] = (module.embedding_dim, module.num_embeddings)
    return layers


def check_lora_fits(model: torch.nn.Module, target_modules: list[str], rank: int) -> dict[str, tuple[int, int]]:
    """The layers a rank-``rank`` LoRA on ``target_modules`` would wrap (see :func:`lora_target_layers`); refused
    with one sentence when a target matches nothing or the rank exceeds a layer's ``min(out, in)``. Works on a
    model skeleton without weights (the meta device), so a run can check this before loading any weight."""
    if rank < 1:
        raise UnlearnkitError(f"LoRA rank must be at least 1 (got {rank}); set a positive rank such as 16.")
    if not target_modules:
        raise UnlearnkitError("LoRA needs at least one target module; name some, e.g. ['q_proj', 'v_proj'].")
    layers = lora_target_layers(model, target_modules)
    unmatched = [t for t in target_modules if not any(matches_target(n, t) for n in layers)]
    if unmatched:
        from unlearnkit.modeling import example_module_suffixes

        raise UnlearnkitError(f"LoRA target modules {unmatched} match no linear layer of the model; use "
                              f"names that exist in it (e.g. {example_module_suffixes(model)}).")
    for name, (out_f, in_f) in layers.items():
        if rank > min(out_f, in_f):
            raise UnlearnkitError(f"LoRA rank {rank} is too large for layer {name} of shape "
                                  f"[{out_f}, {in_f}] (out, in); use a rank of at most {min(out_f, in_f)}.")
    return layers


def attach_lora(model: PreTrainedModel, target_modules: list[str], rank: int = 16, alpha: float = 32,
                dropout: float = 0.0) -> PeftModel:
    """Wrap ``target_modules`` of ``model`` with rank-``rank`` LoRA adapters (PEFT, task CAUSAL_LM).

    The adapter's contribution is ``(alpha / rank) · B A`` with ``B = 0`` at start, so the model's
    outputs are unchanged. PEFT injects the adapter layers **in place**: ``model`` itself is
    modified (its target ``nn.Linear`` modules become ``lora.Linear`` wrappers) and shares its
    weights with the returned :class:`PeftModel`; pass a model you own and use the return value.

    Raises :class:`UnlearnkitError` if a target matches no layer or if ``rank`` is below 1 or above
    ``min(out, in)`` of some target layer (a LoRA of larger rank than the layer cannot add anything).
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    layers = check_lora_fits(model, target_modules, rank)
    # PEFT flips fan_in_fan_out itself for Conv1D but warns; say it up front when every target is Conv1D.
    conv1d = all(isinstance(model.get_submodule(n), Conv1D) for n in layers)
    # PEFT annotates lora_alpha as int but computes alpha / r in float; a float alpha is fine.
    config = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=alpha,  # type: ignore[arg-type]
                        lora_dropout=dropout,
                        target_modules=list(target_modules), fan_in_fan_out=conv1d, init_lora_weights=True)
    with peft_quietly():
        return get_peft_model(model, config)


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT still asks transformers for the deprecated `is_gradient_checkpointing`: a FutureWarning nothing for a
    user to act on, silenced around PEFT's wrapping and loading."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_adapter(base: PreTrainedModel, directory: str) -> PeftModel:
    """``PeftModel.from_pretrained(base, directory)``: a saved adapter on its base (``base`` is wrapped)."""
    from peft import PeftModel

    with peft_quietly():
        return PeftModel.from_pretrained(base, directory)


def merged_model(peft_model: PeftModel) -> PreTrainedModel:
    """Fold the adapter into the base weights (``W + scaling·B A``) and return the plain HF model.

    Uses PEFT's ``merge_and_unload(safe_merge=True)``, which refuses to produce NaN weights. For a
    FLoRA model the base holds the residual ``W − B₀A₀``, so the merged weight is the unlearned one.
    The PEFT wrapper must not be used afterwards.
    """
    return peft_model.merge_and_unload(safe_merge=True)


def save_lora_adapter(peft_model: PeftModel, directory: str | os.PathLike[str]) -> None:
    """Write the standard PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

    For a plain LoRA this adapter applies to the original base. For a FLoRA model it applies to
    the *residual* base; use :func:`unlearnkit.adapters.flora.save_flora_adapter_for_original_base`
    for an adapter that applies to the original model.
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(directory), safe_serialization=True)
