"""FLoRA: Fisher-weighted LoRA initialisation (paper Section 3.4, Eqs. 2-4).

For every LoRA target weight ``W`` (``[out, in]``, rows = output features):

1. empirical Fishers of the forget and the retain set (Eq. 2, :mod:`.fisher`), each divided by
   its token count;
2. relative importance ``F_rel = F_f / (F_r + eps)``;
3. row weights ``w_i = sqrt(Σ_j F_rel[i, j])`` and the closed-form row-weighted low-rank
   approximation of Eq. 4: ``diag(w) W ≈ U S Vᵀ`` (rank ``r``), ``A = S^½ Vᵀ``,
   ``B = diag(w)^{-1} U S^½`` — or, with ``solver="elementwise"``, the general weighted problem
   of Eq. 3 by Srebro & Jaakkola's EM, warm-started from the row solution;
4. PEFT's ``lora_A``/``lora_B`` are set so that the adapter adds exactly ``B A`` and the base
   weight becomes the residual ``W − B A``: the model's outputs do not change at initialisation.

This is the same pattern as PEFT's own data-driven initialisations (PiSSA, OLoRA, CorDA): the
base weight is mutated, and :func:`save_flora_adapter_for_original_base` uses PEFT's
``path_initial_model_for_weight_conversion`` to turn the trained adapter into a standard rank-2r
LoRA for the untouched original model (``ΔW = B A − B₀ A₀``).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError

from .fisher import FisherResult, canonical_name, empirical_fisher, load_fisher, save_fisher

INITIAL_ATTR = "_unlearnkit_flora_initial"


class FloraOptions(BaseModel):
    """Settings of the FLoRA initialisation (defaults follow the paper and the authors' code)."""

    model_config = ConfigDict(extra="forbid")

    estimator: Literal["per_batch", "per_sequence"] = "per_batch"
    """Fisher estimator, see :mod:`unlearnkit.adapters.fisher` (per_batch = authors' code)."""
    eps: float = Field(default=1e-5, ge=0.0)
    """Added to the retain Fisher (per token) before dividing: F_rel = F_f / (F_r + eps)."""
    solver: Literal["row", "elementwise"] = "row"
    """``row``: closed form of Eq. 4 (the paper's choice); ``elementwise``: EM for Eq. 3."""
    svd: Literal["exact", "randomized"] = "exact"
    """``randomized`` uses torch.svd_lowrank (faster on large layers, approximate)."""
    fisher_batch_size: int = Field(default=8, ge=1)
    em_iterations: int = Field(default=50, ge=0)
    em_tolerance: float = Field(default=1e-6, ge=0.0)
    fisher_path: str | None = None
    """Directory caching ``forget.safetensors`` / ``retain.safetensors``: loaded (and checked
    against the model) when present, written after computing otherwise."""
    retain_sequences: int | None = Field(default=0, ge=0)
    """Retain sequences the retain Fisher is estimated on, a seeded sample: 0 = as many as the forget set
    (what one unlearning epoch draws; the paper does not say), ``None`` = the whole retain set (a WikiText
    retain set of 1228 blocks of 200 tokens costs 38 forget-set passes)."""


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


# ----------------------------------------------------------------------------- the maths


def relative_importance(f_forget: torch.Tensor, f_retain: torch.Tensor, eps: float) -> torch.Tensor:
    """``F_rel = F_f / (F_r + eps)`` (Section 3.4), in float32.

    Both Fishers should already be normalised by their token counts. Non-finite entries (e.g. from
    overflowing half-precision gradients) are made harmless: NaN and ``-inf`` become 0, ``+inf``
    becomes the largest finite value of the result (still "most important", but usable by an SVD).
    """
    ratio = f_forget.float() / (f_retain.float() + eps)
    finite = torch.isfinite(ratio)
    if bool(finite.all()):
        return ratio
    top = float(ratio[finite].max()) if bool(finite.any()) else 0.0
    return torch.nan_to_num(ratio, nan=0.0, posinf=top, neginf=0.0)


def row_weights(f_rel: torch.Tensor) -> torch.Tensor:
    """Eq. 4 row weights ``w_i = sqrt(Σ_j F_rel[i, j])`` for ``F_rel`` laid out as ``[out, in]``.

    Rows are output features, as in ``nn.Linear.weight``; GPT-2's ``Conv1D`` stores ``[in, out]``
    and must be transposed first (:func:`initialise_flora` does).
    """
    return f_rel.float().clamp_min(0).sum(dim=1).sqrt()


def _rank_r_svd(matrix: torch.Tensor, rank: int, svd: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if svd == "randomized" and rank < min(matrix.shape):
        # A few power iterations make the randomized range finder accurate for decaying spectra.
        q = min(rank + 8, min(matrix.shape))
        u, s, v = torch.svd_lowrank(matrix, q=q, niter=4)
        return u[:, :rank], s[:rank], v[:, :rank].T
    if svd not in ("exact", "randomized"):
        raise UnlearnkitError(f'Unknown SVD method "{svd}"; choose one of: exact, randomized.')
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def flora_factors(weight: torch.Tensor, row_weight: torch.Tensor, rank: int,
                  svd: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form minimiser of Eq. 4, ``‖diag(w)(W − B A)‖_F`` over rank-``rank`` ``B A``.

    With ``diag(w) W ≈ U S Vᵀ`` (rank-r SVD): ``A = S^½ Vᵀ`` (``[r, in]``) and
    ``B = diag(w)^{-1} U S^½`` (``[out, r]``); by Eckart-Young ``diag(w) B A`` is the best rank-r
    approximation of ``diag(w) W``. Rows with ``w_i = 0`` do not enter the objective; their row of
    ``B`` is set to 0 (any value is optimal, 0 leaves that row in the residual base weight).
    The problem is invariant to scaling ``w``, so ``w`` is divided by its maximum for stability.
    """
    w = row_weight.float()
    if w.dim() != 1 or w.shape[0] != weight.shape[0]:
        raise ValueError(f"row_weight must have shape [{weight.shape[0]}], got {list(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.max()) <= 0:
        raise ValueError("row weights must be finite, non-negative and not all zero")
    w = w / w.max()
    u, s, vh = _rank_r_svd(w[:, None] * weight.float(), rank, svd)
    root = s.sqrt()
    inv_w = torch.where(w > 0, 1.0 / w.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(w))
    a = root[:, None] * vh
    b = inv_w[:, None] * u * root[None, :]
    return a, b


def weighted_objective(weight: torch.Tensor, elementwise_weight: torch.Tensor, approx: torch.Tensor) -> float:
    """``Σ_ij M_ij (W − X)_ij²``: the squared-residual form of Eq. 3 used by the EM solver."""
    return float((elementwise_weight.double() * (weight.double() - approx.double()).square()).sum())


def weighted_low_rank(weight: torch.Tensor, elementwise_weight: torch.Tensor, rank: int,
                      warm_start: tuple[torch.Tensor, torch.Tensor] | None = None, iterations: int = 50,
                      tolerance: float = 1e-6, svd: str = "exact",
                      ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Element-wise weighted low-rank approximation (Eq. 3) by Srebro & Jaakkola's (2003) EM.

    Minimises ``Σ_ij M_ij (W − B A)_ij²`` with ``M = elementwise_weight ≥ 0``. Eq. 3 writes the
    weight inside the square; we treat ``F_rel`` as the weight of the *squared* residual, the
    reading under which Eq. 4's row weights ``sqrt(Σ_j F_rel)`` are the row-constant special case,
    so that the row solution is a consistent warm start.

    Each step fills the unobserved part: ``X ← rank_r(M̃ ⊙ W + (1 − M̃) ⊙ X)`` with
    ``M̃ = M / max M`` ∈ [0, 1], which never increases the objective. The best iterate is returned
    (so the result is never worse than the warm start), with the objective history (index 0 =
    warm start). Stops early when the relative improvement falls below ``tolerance``.
    """
    w32 = weight.float()
    m = elementwise_weight.float().clamp_min(0)
    if not bool(torch.isfinite(m).all()) or float(m.max()) <= 0:
        raise ValueError("element-wise weights must be finite, non-negative and not all zero")
    m_tilde = m / m.max()
    if warm_start is None:
        warm_start = flora_factors(w32, row_weights(m), rank, svd)
    a, b = warm_start[0].float(), warm_start[1].float()
    approx = b @ a
    history = [weighted_objective(w32, m, approx)]
    best = (history[0], a, b)
    for _ in range(iterations):
        filled = m_tilde * w32 + (1 - m_tilde) * approx
        u, s, vh = _rank_r_svd(filled, rank, svd)
        root = s.sqrt()
        a, b = root[:, None] * vh, u * root[None, :]
        approx = b @ a
        history.append(weighted_objective(w32, m, approx))
        if history[-1] < best[0]:
            best = (history[-1], a, b)
        prev = history[-2]
        if prev - history[-1] <= tolerance * max(abs(prev), 1e-30):
            break
    return best[1], best[2], history


# ----------------------------------------------------------------------------- PEFT plumbing


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


def _require_blocks(blocks: TokenBlocks | None, role: str) -> TokenBlocks:
    if blocks is None or len(blocks) == 0:
        hint = "the paper uses WikiText validation text" if role == "retain" else "the text to unlearn"
        raise UnlearnkitError(f"FLoRA needs a non-empty {role} set to weigh parameter importance; configure "
                              f"{role} data ({hint}) or use plain LoRA.")
    return blocks


def _fishers(peft_model: PeftModel, names: list[str], forget: TokenBlocks | None, retain: TokenBlocks | None,
             options: FloraOptions, timings: dict[str, float]) -> tuple[FisherResult, FisherResult]:
    cache = Path(options.fisher_path) if options.fisher_path else None
    results: list[FisherResult] = []
    for role, blocks in (("forget", forget), ("retain", retain)):
        path = cache / f"{role}.safetensors" if cache else None
        t0 = time.perf_counter()
        if path is not None and path.is_file():
            result = load_fisher(path, peft_model, names, estimator=options.estimator)
        else:
            result = empirical_fisher(peft_model, names, _require_blocks(blocks, role),
                                      batch_size=options.fisher_batch_size, estimator=options.estimator)
            if path is not None:
                save_fisher(result, path)
        timings[f"fisher_{role}_s"] = time.perf_counter() - t0
        results.append(result)
    return results[0], results[1]


@torch.no_grad()
def initialise_flora(peft_model: PeftModel, forget: TokenBlocks | None, retain: TokenBlocks | None,
                     options: FloraOptions | None = None,
                     fisher: tuple[FisherResult, FisherResult] | None = None) -> FloraSummary:
    """Initialise the active LoRA adapter of ``peft_model`` with FLoRA (Section 3.4), in place.

    ``fisher`` = ``(forget, retain)`` Fishers skips the Fisher pass (else ``options.fisher_path``
    is tried, else they are computed on ``peft_model``). For each LoRA layer with effective weight
    ``W`` (base plus any current adapter delta) it solves Eq. 4 (or Eq. 3), writes
    ``lora_A = A/√s`` and ``lora_B = B/√s`` with PEFT's scaling ``s = alpha/r`` so that the adapter
    adds exactly ``B A``, and sets the base weight to ``W − s·lora_B·lora_A``. Logits are therefore
    unchanged up to float32 rounding (the tests check 1e-4 absolute on a tiny model).

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
            f_forget, f_retain = _fishers(peft_model, list(layers), forget, retain, options, timings)
    else:
        f_forget, f_retain = fisher
    for role, result in (("forget", f_forget), ("retain", f_retain)):
        missing = [n for n in layers if n not in result.sums]
        if missing:
            raise UnlearnkitError(f"The {role} Fisher lacks weights {missing[:3]} of the LoRA layers; "
                                  "recompute it for the same target modules.")
    norm_f, norm_r = f_forget.normalised(), f_retain.normalised()

    t0 = time.perf_counter()
    stats: list[LayerStats] = []
    for name, layer in layers.items():
        base = _weight(layer.get_base_layer())
        lora_a, lora_b = _weight(layer.lora_A[adapter]), _weight(layer.lora_B[adapter])
        scaling = float(layer.scaling[adapter])
        rank = int(layer.r[adapter])
        w_eff = _oriented(base.float(), layer) + scaling * (lora_b.float() @ lora_a.float())
        if tuple(norm_f[name].shape) != tuple(base.shape) or tuple(norm_r[name].shape) != tuple(base.shape):
            raise UnlearnkitError(f"The Fisher of {name} has shape {tuple(norm_f[name].shape)} but the "
                                  f"weight is {tuple(base.shape)}; recompute the Fisher for this model.")
        f_rel = relative_importance(_oriented(norm_f[name], layer), _oriented(norm_r[name], layer),
                                    options.eps)
        nonfinite = int((~torch.isfinite(norm_f[name] / (norm_r[name] + options.eps))).sum())
        w = row_weights(f_rel)
        fallback, reason = False, ""
        if not bool(torch.isfinite(w).all()) or float(w.max()) <= 0:
            fallback, reason = True, "relative importance is all zero or non-finite"
            warnings.warn(f"FLoRA: {reason} for {name}; using uniform row weights (plain SVD) for this "
                          "layer.", stacklevel=2)
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
        root = math.sqrt(scaling)
        new_a = (a / root).to(lora_a.dtype)
        new_b = (b / root).to(lora_b.dtype)
        lora_a.copy_(new_a)
        lora_b.copy_(new_b)
        # Residual from the factors as stored, so residual + adapter reproduces W as closely as floats allow.
        residual = w_eff - scaling * (new_b.float() @ new_a.float())
        base.copy_(_oriented(residual, layer).to(base.dtype))
        approx = b @ a
        wn = w / w.max()
        objective = float((wn[:, None] * (w_eff - approx)).square().sum())
        total = float((wn[:, None] * w_eff).square().sum())
        stats.append(LayerStats(
            name=name, shape=list(w_eff.shape), rank=rank, weight_norm=float(w_eff.norm()),
            adapter_norm=float(approx.norm()), f_rel_mean=float(f_rel.mean()), f_rel_max=float(f_rel.max()),
            f_rel_nonfinite=nonfinite, retain_below_eps=float((norm_r[name] < options.eps).float().mean()),
            row_weight_min=float(wn.min()), row_weight_max=float(wn.max()), objective=objective,
            objective_relative=objective / total if total > 0 else 0.0, fallback=fallback,
            fallback_reason=reason, em_warm_start_objective=em_start, em_objective=em_final,
            em_iterations=em_iters,
        ))
    timings["decomposition_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    initial = {k: v.detach().clone() for k, v in state.items()}
    setattr(peft_model, INITIAL_ATTR, {"adapter": adapter, "state": initial})
    return FloraSummary(adapter_name=adapter, options=options.model_dump(), layers=stats,
                        forget_tokens=f_forget.num_tokens, retain_tokens=f_retain.num_tokens, timings=timings,
                        initial_state=initial)


# ----------------------------------------------------------------------------- export


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
