"""Export a trained FLoRA adapter as a standard PEFT LoRA for the original, unmutated base model."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import save_file

from unlearnkit.errors import UnlearnkitError

from .init import INITIAL_ATTR, FloraSummary


def save_flora_initial_adapter(peft_model: PeftModel, directory: str | os.PathLike[str],
                               initial: FloraSummary | None = None) -> None:
    """Write the FLoRA initial adapter ``(B₀, A₀)`` as a standard PEFT adapter directory.

    This is the directory PEFT's PiSSA workflow calls the "initial model": its config says
    ``init_lora_weights=True`` so that loading it never re-runs a mutating initialisation.
    """
    adapter, state = _initial_state(peft_model, initial)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = cast(LoraConfig, copy.deepcopy(peft_model.peft_config[adapter]))
    config.init_lora_weights = True
    config.save_pretrained(str(directory))
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "adapter_model.safetensors"),
              metadata={"format": "pt"})


def _initial_state(peft_model: PeftModel,
                   initial: FloraSummary | None) -> tuple[str, dict[str, torch.Tensor]]:
    if initial is not None:
        return initial.adapter_name, initial.initial_state
    stored = getattr(peft_model, INITIAL_ATTR, None)
    if stored is None:
        raise UnlearnkitError("This model was not initialised with FLoRA in this process; pass the initial "
                              "adapter directory or the FloraSummary returned by initialise_flora.")
    return stored["adapter"], stored["state"]


def save_flora_adapter_for_original_base(
    peft_model: PeftModel, directory: str | os.PathLike[str],
    initial: FloraSummary | str | os.PathLike[str] | None = None,
) -> None:
    """Save the trained FLoRA adapter as a standard LoRA for the ORIGINAL (unmutated) base model.

    FLoRA mutated the base to ``W − B₀A₀``; the unlearned weight is ``W − B₀A₀ + B A``, i.e. the
    original ``W`` plus ``ΔW = B A − B₀ A₀ = [B | −B₀] [A ; A₀]``, a rank-2r LoRA. We reuse PEFT's
    own conversion for mutated initialisations (PiSSA/OLoRA/CorDA): the initial adapter is written
    to a temporary directory and passed as ``save_pretrained(...,
    path_initial_model_for_weight_conversion=...)``, which concatenates the factors
    (``LoraModel.subtract_mutated_init``) and doubles ``r`` and ``lora_alpha`` so the scaling is
    unchanged. ``PeftModel.from_pretrained(original_base, directory)`` then gives the unlearned model.

    ``initial`` is the :class:`FloraSummary`, or a directory written by
    :func:`save_flora_initial_adapter`, or ``None`` to use the factors kept on ``peft_model``.
    """
    adapter = peft_model.active_adapter
    with tempfile.TemporaryDirectory(prefix="flora_") as tmp:
        # PEFT loads the initial adapter under the folder's base name; keep it distinct from live adapters.
        init_dir = Path(tmp) / "flora_initial"
        if isinstance(initial, (str, os.PathLike)):
            if not (Path(initial) / "adapter_config.json").is_file():
                raise UnlearnkitError(f"{initial} is not a saved FLoRA initial adapter; pass the directory "
                                      "written by save_flora_initial_adapter.")
            # PEFT rewrites the config in that directory, so work on a copy of the user's files.
            shutil.copytree(initial, init_dir)
        else:
            save_flora_initial_adapter(peft_model, init_dir, initial)
        Path(directory).mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(directory), selected_adapters=[adapter], safe_serialization=True,
                                   path_initial_model_for_weight_conversion=str(init_dir))
