"""Weight quantisation as an attack: round the unlearned model's weights to a few bits and see what comes back.

Zhang et al. (ICLR 2025, "Catastrophic failure of LLM unlearning via quantization") show that 4-bit
quantisation of an unlearned model can restore the text it was made to forget: unlearning moves weights by
less than one quantisation step, so rounding snaps many of them back to where the original model had them.

The quantisation is simulated ("fake quantisation"): weights are quantised and immediately dequantised, so
the model keeps its dtype and architecture, still saves with ``save_pretrained`` and still loads with
transformers, while every weight lies on the grid a real int8 / int4 / GGUF kernel would use.

- :func:`quantize_dequantize`: round-to-nearest (RTN) of one tensor, per group of the input dimension.
- :func:`gguf_round_trip`: the same through llama.cpp's own Q8_0 / Q4_0 block formats (``gguf`` package).
- :func:`quantize_model`: every linear layer of a model in place, except the output layer and embeddings.
- :func:`quantize_base_only`: a PEFT LoRA model's base weights, its adapter kept in full precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

# GGUF formats we simulate: name -> bits per weight value (excluding the per-block fp16 scale).
GGUF_FORMATS = {"Q8_0": 8, "Q4_0": 4}
# llama.cpp quantises Q8_0 / Q4_0 in blocks of 32 consecutive values of a row.
GGUF_BLOCK_SIZE = 32


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) is rounded in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def quantize_dequantize(weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> torch.Tensor:
    """Round-to-nearest quantisation of ``weight`` followed by dequantisation; same dtype, shape and device.

    Groups are ``group_size`` consecutive elements of the last (input) dimension of each row; ``None`` makes
    one group per row (per-channel). Each group has its own scale:

    - symmetric: ``scale = max|w| / (2^(bits-1) - 1)``, ``q = clamp(round(w / scale), -(2^(bits-1) - 1),
      2^(bits-1) - 1)``, ``w' = q * scale``. The integer range is the symmetric ("narrow") one,
      [-127, 127] for 8 bits and [-7, 7] for 4 bits: with this scale the largest magnitude lands exactly on
      the top level, so the extra code -2^(bits-1) could never be reached, and a grid symmetric around zero
      treats positive and negative weights alike.
    - asymmetric: ``scale = (max - min) / (2^bits - 1)``, ``zp = round(-min / scale)``,
      ``q = clamp(round(w / scale) + zp, 0, 2^bits - 1)``, ``w' = (q - zp) * scale``.

    Either way ``|w - w'| <= scale / 2`` and a group takes at most 2^bits distinct values. A group whose
    scale is 0 (all zeros, or asymmetric and constant) is returned unchanged: it is exactly representable.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}.")
    width = weight.shape[-1] if weight.dim() else 1
    group = width if group_size is None else group_size
    if group <= 0 or width % group:
        raise ValueError(f"the last dimension ({width}) of a weight of shape {tuple(weight.shape)} is not divisible "
                         f"by group_size {group_size}; choose a group size that divides it, or None for per-channel.")
    values = weight.detach().to(_compute_dtype(weight.dtype)).reshape(-1, width // group, group)
    if symmetric:
        top = 2 ** (bits - 1) - 1
        scale = values.abs().amax(dim=-1, keepdim=True) / top
        safe_scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        rounded = torch.clamp(torch.round(values / safe_scale), -top, top) * scale
    else:
        top = 2**bits - 1
        low = values.amin(dim=-1, keepdim=True)
        scale = (values.amax(dim=-1, keepdim=True) - low) / top
        safe_scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero_point = torch.round(-low / safe_scale)
        codes = torch.clamp(torch.round(values / safe_scale) + zero_point, 0, top)
        rounded = (codes - zero_point) * scale
    # scale 0 means the group is constant: keep it (the dequantised zeros above would be wrong for a constant c)
    rounded = torch.where(scale == 0, values, rounded)
    return rounded.reshape(weight.shape).to(weight.dtype)


def gguf_round_trip(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """``weight`` quantised to a GGUF block format ("Q8_0" or "Q4_0") by the ``gguf`` package and dequantised.

    Both formats store one fp16 scale ``d`` per block of 32 consecutive values of the last dimension:
    Q8_0 keeps ``round(x / d)`` in [-127, 127] with ``d = max|x| / 127``; Q4_0 keeps 4-bit codes in [-8, 7]
    with ``d = -m / 8``, ``m`` the block's value of largest magnitude. The result has the input's dtype,
    shape and device; the last dimension must be a multiple of 32.
    """
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    if kind not in GGUF_FORMATS:
        raise ValueError(f'unknown GGUF format "{kind}"; choose one of: {", ".join(GGUF_FORMATS)}.')
    if weight.dim() == 0 or weight.shape[-1] % GGUF_BLOCK_SIZE:
        raise ValueError(f"GGUF {kind} quantises blocks of {GGUF_BLOCK_SIZE} along the last dimension; a weight "
                         f"of shape {tuple(weight.shape)} does not split into them.")
    qtype = GGMLQuantizationType[kind]
    # GGUF files are made from float32 values, so that is what the format rounds
    values = weight.detach().to(device="cpu", dtype=torch.float32).numpy()
    restored = dequantize(quantize(np.ascontiguousarray(values), qtype), qtype)
    return torch.from_numpy(np.asarray(restored, dtype=np.float32)).reshape(weight.shape).to(weight)


@dataclass(frozen=True)
class QuantSpec:
    """One weight quantisation: RTN with ``bits`` per weight and a scale per ``group_size`` input values (None:
    per output channel), symmetric or with a zero point; or, with ``gguf`` set, llama.cpp's Q8_0 / Q4_0
    formats (8 / 4 bits, symmetric, blocks of 32: ``QuantSpec(4, gguf="Q4_0")``)."""

    bits: int
    group_size: int | None = None
    symmetric: bool = True
    gguf: str | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be between 2 and 8, got {self.bits}.")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group_size must be positive or None (per channel), got {self.group_size}.")
        if self.gguf is None:
            return
        if self.gguf not in GGUF_FORMATS:
            raise ValueError(f'unknown GGUF format "{self.gguf}"; choose one of: {", ".join(GGUF_FORMATS)}.')
        if self.bits != GGUF_FORMATS[self.gguf] or not self.symmetric or self.group_size not in (None, 32):
            raise ValueError(f"GGUF {self.gguf} is {GGUF_FORMATS[self.gguf]}-bit, symmetric, in groups of 32; "
                             f"write QuantSpec({GGUF_FORMATS[self.gguf]}, gguf={self.gguf!r}).")
        # the format fixes the group size; record it so the spec describes what happens
        object.__setattr__(self, "group_size", GGUF_BLOCK_SIZE)

    @property
    def label(self) -> str:
        """A short name, e.g. "int8-g128-sym", "int4-g32-asym", "int8-channel-sym" or "gguf-Q4_0"."""
        if self.gguf is not None:
            return f"gguf-{self.gguf}"
        groups = "channel" if self.group_size is None else f"g{self.group_size}"
        return f"int{self.bits}-{groups}-{'sym' if self.symmetric else 'asym'}"

    def round_trip(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` (rows of input values) quantised and dequantised as this spec says."""
        if self.gguf is not None:
            return gguf_round_trip(weight, self.gguf)
        return quantize_dequantize(weight, self.bits, self.group_size, self.symmetric)


def _embedding_weight_ids(model: nn.Module) -> set[int]:
    """Identities of the input and output embedding weights (one object when they are tied)."""
    found = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            layer = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            continue
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor):
            found.add(id(weight))
    return found


def _quantisable_weights(model: nn.Module,
                         skip: Callable[[str, nn.Module], bool] | None) -> list[tuple[str, torch.Tensor, bool]]:
    """(name, weight, stored as [in, out]) of the Linear and Conv1D layers of ``model``, except the output layer,
    the embeddings and the layers ``skip`` names.

    The output layer and embeddings stay in full precision as in common practice (GPTQ, AWQ and bitsandbytes'
    4-bit loading keep them in 16 bits); a tied output layer would otherwise quantise the embeddings too.
    """
    embeddings = _embedding_weight_ids(model)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)):
            continue
        is_output = name == "lm_head" or name.endswith(".lm_head") or id(module.weight) in embeddings
        if is_output or (skip is not None and skip(name, module)):
            continue
        found.append((name, module.weight, isinstance(module, Conv1D)))
    return found


def quantize_model(model: nn.Module, spec: QuantSpec, *,
                   skip: Callable[[str, nn.Module], bool] | None = None) -> dict[str, float]:
    """Quantise in place the weight of every ``nn.Linear`` and GPT-2 ``Conv1D`` of ``model``.

    Left in full precision: biases, norms, the output layer and the embeddings (common practice, see
    :func:`_quantisable_weights`) and every module for which ``skip(name, module)`` is true (e.g.
    ``lambda name, _: "lora_" in name`` keeps LoRA adapters). ``Conv1D`` stores its weight as [in, out], so it
    is transposed to group along the input dimension as for ``nn.Linear``'s [out, in]. In GGUF mode, weights
    whose input dimension is not a multiple of 32 cannot be stored in the format and are left as they are
    (counted in ``weights_skipped``); in RTN mode a group size that does not divide a layer raises ValueError
    before any weight is changed.

    Returns ``weights_quantised``, ``parameters_quantised``, ``weights_skipped``, ``max_abs_error`` and
    ``relative_mean_abs_error`` (mean |w - w'| over mean |w|, across every quantised parameter).
    """
    planned, skipped = [], 0
    for name, weight, transposed in _quantisable_weights(model, skip):
        width = weight.shape[0] if transposed else weight.shape[-1]
        if spec.gguf is not None and width % GGUF_BLOCK_SIZE:
            skipped += 1
        elif spec.gguf is None and spec.group_size is not None and width % spec.group_size:
            raise ValueError(f"{name} has {width} inputs, not divisible by group_size {spec.group_size}; choose a "
                             "group size that divides every layer's input size, or per-channel quantisation.")
        else:
            planned.append((weight, transposed))

    parameters, max_error, total_error, total_magnitude = 0, 0.0, 0.0, 0.0
    with torch.no_grad():
        for weight, transposed in planned:
            # quantisation groups run along the input dimension, which is Conv1D's first
            rounded = spec.round_trip(weight.t()).t() if transposed else spec.round_trip(weight)
            error = (rounded.double() - weight.double()).abs()
            max_error = max(max_error, error.max().item())
            total_error += error.sum().item()
            total_magnitude += weight.double().abs().sum().item()
            parameters += weight.numel()
            weight.copy_(rounded)
    return {
        "weights_quantised": len(planned),
        "parameters_quantised": parameters,
        "weights_skipped": skipped,
        "max_abs_error": max_error,
        "relative_mean_abs_error": total_error / total_magnitude if total_magnitude else 0.0,
    }


def quantize_base_only(peft_model: nn.Module, spec: QuantSpec) -> dict[str, float]:
    """Quantise a PEFT LoRA model's base weights in place and keep its adapter in full precision.

    This is how an adapter is deployed on a quantised base (QLoRA-style): every linear layer of the base model
    is quantised as :func:`quantize_model` would quantise the merged model (the wrapped ``base_layer`` of each
    LoRA layer included, the output layer and embeddings excluded), so the two attacks differ only in whether
    the adapter is rounded too. Every adapter weight of peft's LoRA layers (``lora_A``, ``lora_B``, ...) is
    left bit for bit as it was.
    """
    from peft.tuners.lora import LoraLayer

    adapter_modules: set[int] = set()
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for attribute in module.adapter_layer_names:
                part = getattr(module, attribute, None)
                if isinstance(part, nn.Module):
                    adapter_modules.update(id(inner) for inner in part.modules())
    if not adapter_modules:
        raise ValueError("the model has no PEFT LoRA layers; quantise it whole with quantize_model instead.")
    return quantize_model(peft_model, spec, skip=lambda _name, module: id(module) in adapter_modules)
