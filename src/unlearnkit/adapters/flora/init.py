"""FLoRA initialisation of PEFT LoRA layers: Fisher pass, factors, residual base (Section 3.4).

For every LoRA target weight: the forget and retain empirical Fishers (Eq. 2, :mod:`..fisher`), the
factors of :mod:`.maths`, then PEFT's ``lora_A``/``lora_B`` are set so that the adapter adds exactly
``B A`` and the base weight becomes the residual ``W − B A``: the model's outputs do not change at
initialisation. This is the pattern of PEFT's own data-driven initialisations (PiSSA, OLoRA, CorDA);
:mod:`.export` turns the trained adapter into a standard LoRA for the untouched original model.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from unlearnkit.adapters.fisher import FisherResult, canonical_name, empirical_fisher, load_fisher, save_fisher
from unlearnkit.config import FloraOptions
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.sources import dataset_fingerprint
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parallel import SINGLE, Processes

from .maths import flora_factors, relative_importance, row_weights, weighted_low_rank

INITIAL_ATTR = "_unlearnkit_flora_initial"


def fisher_retain_sample(retain: TokenBlocks, forget_count: int, options: FloraOptions, seed: int) -> TokenBlocks:
    """The retain sequences the retain Fisher is estimated on (see :attr:`FloraOptions.retain_sequences`)."""
    wanted = forget_count if options.retain_sequences == 0 else options.retain_sequences
    if wanted is None or wanted >= len(retain):
        return retain
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(retain), generator=generator)[:wanted].sort().values
    return retain.subset(rows.tolist())


@dataclass
class LayerStats:
    """What FLoRA did to one target weight (all floats, JSON-ready)."""

    name: str
    shape: list[int]
    rank: int
    weight_norm: float
    adapter_norm: float
    f_rel_mean: float
    f_rel_max: float
    f_rel_nonfinite: int
    retain_below_eps: float
    row_weight_min: float
    row_weight_max: float
    objective: float
    objective_relative: float
    fallback: bool = False
    fallback_reason: str = ""
    em_warm_start_objective: float | None = None
    """Eq. 3 objective of the row (Eq. 4) solution, when the element-wise solver ran."""
    em_objective: float | None = None
    """Eq. 3 objective after EM (never above ``em_warm_start_objective``)."""
    em_iterations: int | None = None


@dataclass
class FloraSummary:
    """Per-layer statistics and timings of :func:`initialise_flora`; ``to_dict()`` is JSON-ready.

    ``initial_state`` holds the initial adapter factors ``B₀, A₀`` (PEFT state-dict keys) needed to
    export an adapter for the original base; it is not part of ``to_dict()``.
    """

    adapter_name: str
    options: dict[str, Any]
    layers: list[LayerStats]
    forget_tokens: int
    retain_tokens: int
    timings: dict[str, float]
    initial_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def fallback_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.fallback]

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter_name": self.adapter_name, "options": self.options,
            "forget_tokens": self.forget_tokens, "retain_tokens": self.retain_tokens,
            "timings": self.timings, "fallback_layers": self.fallback_layers,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _lora_layers(peft_model: torch.nn.Module, adapter: str) -> dict[str, LoraLayer]:
    """``{plain-model weight name: LoRA layer}`` for every layer carrying ``adapter``."""
    layers: dict[str, LoraLayer] = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            layers[canonical_name(name) + ".weight"] = module
    if not layers:
        raise UnlearnkitError(f'The model has no LoRA layers for adapter "{adapter}"; call attach_lora '
                              "before initialise_flora.")
    return layers


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _oriented(tensor: torch.Tensor, layer: LoraLayer) -> torch.Tensor:
    # PEFT's fan_in_fan_out flag marks Conv1D weights stored as [in, out]; FLoRA works on [out, in].
    return tensor.T if getattr(layer, "fan_in_fan_out", False) else tensor


def _effective_weight(layer: LoraLayer, adapter: str) -> torch.Tensor:
    """``W`` = base plus the adapter's current delta, ``[out, in]``, in float32."""
    base = _weight(layer.get_base_layer())
    lora_a, lora_b = _weight(layer.lora_A[adapter]), _weight(layer.lora_B[adapter])
    return _oriented(base.float(), layer) + float(layer.scaling[adapter]) * (lora_b.float() @ lora_a.float())


def _install_residual(layer: LoraLayer, adapter: str, w_eff: torch.Tensor) -> None:
    """Set the base weight to ``W − s·B·A`` with the factors as stored in the layer, so that residual plus
    adapter reproduce ``W`` as closely as floats allow (and a restore computes the same bits)."""
    lora_a, lora_b = _weight(layer.lora_A[adapter]), _weight(layer.lora_B[adapter])
    residual = w_eff - float(layer.scaling[adapter]) * (lora_b.float() @ lora_a.float())
    base = _weight(layer.get_base_layer())
    base.copy_(_oriented(residual, layer).to(base.dtype))


def _remember_initial(peft_model: PeftModel, adapter: str) -> dict[str, torch.Tensor]:
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    initial = {k: v.detach().clone() for k, v in state.items()}
    setattr(peft_model, INITIAL_ATTR, {"adapter": adapter, "state": initial})
    return initial


@torch.no_grad()
def restore_flora(peft_model: PeftModel, initial: dict[str, torch.Tensor]) -> None:
    """Put a model whose LoRA was just attached back where :func:`initialise_flora` left it, from the initial
    factors it recorded (``FloraSummary.initial_state``): the same factors and, computed by the same
    expression, the same residual base, bit for bit; no Fisher pass. Resuming a FLoRA run uses this."""
    adapter = peft_model.active_adapter
    assert isinstance(adapter, str)
    layers = _lora_layers(peft_model, adapter)
    effective = {name: _effective_weight(layer, adapter) for name, layer in layers.items()}
    loaded = set_peft_model_state_dict(peft_model, initial, adapter_name=adapter)
    ours = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    if getattr(loaded, "unexpected_keys", None) or set(ours) != set(initial):
        raise UnlearnkitError("The saved FLoRA factors do not fit this model's LoRA layers; start the run afresh.")
    for name, layer in layers.items():
        _install_residual(layer, adapter, effective[name])
    _remember_initial(peft_model, adapter)


def _require_blocks(blocks: TokenBlocks | None, role: str) -> TokenBlocks:
    if blocks is None or len(blocks) == 0:
        hint = "the paper uses WikiText validation text" if role == "retain" else "the text to unlearn"
        raise UnlearnkitError(f"FLoRA needs a non-empty {role} set to weigh parameter importance; configure "
                              f"{role} data ({hint}) or use plain LoRA.")
    return blocks


def compute_fishers(model: torch.nn.Module, names: list[str], forget: TokenBlocks | None,
                    retain: TokenBlocks | None, options: FloraOptions,
                    timings: dict[str, float] | None = None,
                    processes: Processes = SINGLE) -> tuple[FisherResult, FisherResult]:
    """The forget and retain Fishers of the weights ``names``: read from ``options.fisher_path`` where saved
    there, else computed on ``model`` (and saved there when a path is set).

    A saved Fisher is used only for the same sequences it was computed on (its data fingerprint) when the
    sequences are given; for other sequences it is recomputed, with a warning, and the cached file is left
    as it is (it is the user's).
    """
    timings = timings if timings is not None else {}
    cache = Path(options.fisher_path) if options.fisher_path else None
    results: list[FisherResult] = []
    for role, blocks in (("forget", forget), ("retain", retain)):
        path = cache / f"{role}.safetensors" if cache else None
        t0 = time.perf_counter()
        result = load_fisher(path, model, names, estimator=options.estimator) if path and path.is_file() else None
        fingerprint = dataset_fingerprint(blocks) if blocks is not None and len(blocks) else None
        stored = result.metadata.get("data_fingerprint") if result is not None else None
        if result is not None and fingerprint is not None and stored != fingerprint:
            warnings.warn(f"The cached {role} Fisher in {path} was computed on other {role} sequences; computing "
                          "it afresh for this run (the cached file is left as it is).", stacklevel=2)
            result = None
            path = None
        if result is None:
            result = empirical_fisher(model, names, _require_blocks(blocks, role),
                                      batch_size=options.fisher_batch_size, estimator=options.estimator,
                                      processes=processes)
            result.metadata["data_fingerprint"] = dataset_fingerprint(_require_blocks(blocks, role))
            if path is not None and processes.main:
                save_fisher(result, path)
        timings[f"fisher_{role}_s"] = time.perf_counter() - t0
        results.append(result)
    return results[0], results[1]


@torch.no_grad()
def initialise_flora(peft_model: PeftModel, forget: TokenBlocks | None, retain: TokenBlocks | None,
                     options: FloraOptions | None = None,
                     fisher: tuple[FisherResult, FisherResult] | None = None,
                     processes: Processes = SINGLE) -> FloraSummary:
    """Initialise the active LoRA adapter of ``peft_model`` with FLoRA (Section 3.4), in place.

    ``fisher`` = ``(forget, retain)`` Fishers skips the Fisher pass (else ``options.fisher_path``
    is tried, else they are computed on ``peft_model``). For each LoRA layer with effective weight
    ``W`` (base plus any current adapter delta) it solves Eq. 4 (or Eq. 3), writes
    ``lora_A = A/√s`` and ``lora_B = B/√s`` with PEFT's scaling ``s = alpha/r`` so that the adapter
    adds exactly ``B A``, and sets the base weight to ``W − s·lora_B·lora_A``. Logits are therefore
    unchanged up to float32 rounding (the tests check 1e-4 absolute on a tiny model).

    On several ``processes`` the Fisher passes are split between them and summed (:mod:`unlearnkit.parallel`),
    so every process starts from the same factors.

    A layer whose relative importance is all zero or non-finite gets uniform row weights (plain
    PiSSA-style SVD) with a warning, flagged in the summary. The initial factors are kept on the
    model and in the summary for :func:`save_flora_adapter_for_original_base`.
    """
    options = options or FloraOptions()
    adapter = peft_model.active_adapter
    if not isinstance(adapter, str):
        raise UnlearnkitError("FLoRA initialises one adapter at a time; activate a single LoRA adapter "
                              "first.")
    layers = _lora_layers(peft_model, adapter)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    if fisher is None:
        # Fail before any expensive pass if the retain set is missing.
        if not options.fisher_path or not (Path(options.fisher_path) / "retain.safetensors").is_file():
            _require_blocks(retain, "retain")
        with torch.enable_grad():
            f_forget, f_retain = compute_fishers(peft_model, list(layers), forget, retain, options, timings,
                                                 processes)
    else:
        f_forget, f_retain = fisher
    for role, result in (("forget", f_forget), ("retain", f_retain)):
        missing = [n for n in layers if n not in result.sums]
        if missing:
            raise UnlearnkitError(f"The {role} Fisher lacks weights {missing[:3]} of the LoRA layers; "
                                  "recompute it for the same target modules.")
    norm_f, norm_r = f_forget.normalised(), f_retain.normalised()

    t0 = time.perf_counter()
    stats = [_initialise_layer(name, layer, adapter, norm_f[name], norm_r[name], options)
             for name, layer in layers.items()]
    timings["decomposition_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    initial = _remember_initial(peft_model, adapter)
    return FloraSummary(adapter_name=adapter, options=options.model_dump(), layers=stats,
                        forget_tokens=f_forget.num_tokens, retain_tokens=f_retain.num_tokens, timings=timings,
                        initial_state=initial)


def _initialise_layer(name: str, layer: Any, adapter: str, fisher_forget: torch.Tensor, fisher_retain: torch.Tensor,
                      options: FloraOptions) -> LayerStats:
    """One LoRA layer's FLoRA factors (Eq. 4, or Eq. 3's EM) written into it, its base replaced by the residual;
    what the decomposition achieved."""
    base = _weight(layer.get_base_layer())
    lora_a, lora_b = _weight(layer.lora_A[adapter]), _weight(layer.lora_B[adapter])
    rank = int(layer.r[adapter])
    w_eff = _effective_weight(layer, adapter)
    if tuple(fisher_forget.shape) != tuple(base.shape) or tuple(fisher_retain.shape) != tuple(base.shape):
        raise UnlearnkitError(f"The Fisher of {name} has shape {tuple(fisher_forget.shape)} but the "
                              f"weight is {tuple(base.shape)}; recompute the Fisher for this model.")
    f_rel = relative_importance(_oriented(fisher_forget, layer), _oriented(fisher_retain, layer),
                                options.eps)
    nonfinite = int((~torch.isfinite(fisher_forget / (fisher_retain + options.eps))).sum())
    w = row_weights(f_rel)
    fallback, reason = False, ""
    if not bool(torch.isfinite(w).all()) or float(w.max()) <= 0:
        fallback, reason = True, "relative importance is all zero or non-finite"
        warnings.warn(f"FLoRA: {reason} for {name}; using uniform row weights (plain SVD) for this "
                      "layer.", stacklevel=3)
        w = torch.ones_like(w)
        f_rel = torch.ones_like(f_rel)
    a, b = flora_factors(w_eff, w, rank, options.svd)
    em_start: float | None = None
    em_final: float | None = None
    em_iters: int | None = None
    if options.solver == "elementwise":
        a, b, history = weighted_low_rank(w_eff, f_rel, rank, (a, b), options.em_iterations,
                                          options.em_tolerance, options.svd)
        em_start, em_final, em_iters = history[0], min(history), len(history) - 1
    root = math.sqrt(float(layer.scaling[adapter]))
    lora_a.copy_((a / root).to(lora_a.dtype))
    lora_b.copy_((b / root).to(lora_b.dtype))
    _install_residual(layer, adapter, w_eff)
    approx = b @ a
    wn = w / w.max()
    objective = float((wn[:, None] * (w_eff - approx)).square().sum())
    total = float((wn[:, None] * w_eff).square().sum())
    return LayerStats(
        name=name, shape=list(w_eff.shape), rank=rank, weight_norm=float(w_eff.norm()),
        adapter_norm=float(approx.norm()), f_rel_mean=float(f_rel.mean()), f_rel_max=float(f_rel.max()),
        f_rel_nonfinite=nonfinite, retain_below_eps=float((fisher_retain < options.eps).float().mean()),
        row_weight_min=float(wn.min()), row_weight_max=float(wn.max()), objective=objective,
        objective_relative=objective / total if total > 0 else 0.0, fallback=fallback,
        fallback_reason=reason, em_warm_start_objective=em_start, em_objective=em_final,
        em_iterations=em_iters,
    )
