"""Empirical Fisher information of selected weight matrices (paper Section 3.4, Eq. 2).

``F̂_θ = 1/|D| Σ_x (∂ L_LM(x; θ) / ∂θ)²`` is accumulated for the target weights only (the
weights FLoRA will decompose), in float32, without ever storing per-sample gradients.

Two estimators are offered; both accumulate ``Σ_u n_u · ḡ_u²`` over *units* ``u`` where
``ḡ_u`` is the gradient of the mean token loss of the unit and ``n_u`` its number of predicted
tokens, so that dividing by the total token count (:meth:`FisherResult.normalised`) puts both on
the same per-token scale:

``per_batch`` (default)
    A unit is a mini-batch: one backward per batch, squared batch-mean gradient scaled by the
    batch's token count. This is what the authors' released code does (``grad**2 * cnt``), i.e.
    what produced the paper's numbers, and it is the cheapest (one backward per batch, so about
    the cost of one unlearning epoch). It is not the textbook empirical Fisher: the square is taken
    after averaging, so it measures the squared *mean* gradient plus a variance term shrunk by
    the batch size.
``per_sequence``
    A unit is one sequence: the textbook empirical Fisher, the mean over sequences of squared
    per-sequence gradients (Eq. 2 with ``L_LM`` the sequence's mean token loss; for equal-length
    sequences ``normalised()`` is exactly ``1/N Σ_x ḡ_x²``). It runs the model with batch size 1,
    so it costs ``N`` small backwards instead of ``N / batch_size`` large ones.

Fishers of a forget and a retain set are only compared through their ratio (Eq. 3/4), so what
matters is that both use the same estimator and are normalised by their token counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import atomic_write
from unlearnkit.modeling import example_module_suffixes
from unlearnkit.objectives import IGNORE_INDEX, token_nll
from unlearnkit.parallel import SINGLE, Processes
from unlearnkit.targets import matches_target

Estimator = Literal["per_batch", "per_sequence"]
ESTIMATORS: tuple[str, ...] = ("per_batch", "per_sequence")
FORMAT_VERSION = "1"


def canonical_name(name: str) -> str:
    """Parameter/module name as in the plain model, whether or not PEFT has wrapped it.

    PEFT renames ``transformer.h.0.attn.q_proj.weight`` to
    ``base_model.model.transformer.h.0.attn.q_proj.base_layer.weight``; keying Fishers by the plain
    name lets a Fisher computed on either model be used with the other.
    """
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".").removesuffix(".base_layer")


def target_parameters(model: torch.nn.Module, weight_names: Iterable[str]) -> dict[str, torch.nn.Parameter]:
    """Resolve module suffixes (``"q_proj"``) or parameter names to ``{canonical name: weight}``.

    Only 2-D ``weight`` parameters are selected; LoRA factors of a PEFT model are never targets.
    Raises :class:`UnlearnkitError` if a requested name matches nothing.
    """
    wanted = list(weight_names)
    if not wanted:
        raise UnlearnkitError("No target weights were given for the Fisher pass; pass module names such "
                              "as ['q_proj', 'v_proj'].")
    found: dict[str, torch.nn.Parameter] = {}
    used: set[str] = set()
    for raw, param in model.named_parameters():
        if "lora_" in raw or not raw.endswith(".weight") or param.dim() != 2:
            continue
        name = canonical_name(raw)
        module_name = name[: -len(".weight")]
        for w in wanted:
            if w == name or matches_target(module_name, w):  # a full parameter name also selects itself
                found[name] = param
                used.add(w)
    missing = [w for w in wanted if w not in used]
    if missing:
        raise UnlearnkitError(f"Target modules {missing} match no 2-D weight in the model; use module "
                              f"name suffixes that exist in it (e.g. {example_module_suffixes(model)}).")
    return found


def model_fingerprint(model: torch.nn.Module, params: dict[str, torch.nn.Parameter]) -> str:
    """A short hash of the model type, the target names/shapes and a checksum of their values.

    Loading a Fisher whose fingerprint differs only warns (the weights may legitimately have been
    fine-tuned since); names and shapes are checked strictly.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update(str(getattr(config, "model_type", type(model).__name__)).encode())
    for name in sorted(params):
        p = params[name].detach()
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        # A float64 sum and a strided sample are cheap and change with any real change of weights.
        sample = p.flatten()[:: max(1, p.numel() // 64)].tolist()
        h.update(f"{float(p.double().sum()):.10e}:{sample}".encode())
    return h.hexdigest()[:16]


@dataclass
class FisherResult:
    """Accumulated empirical Fisher (Eq. 2) of some weights over one data set.

    ``sums[name]`` is ``Σ_u n_u ḡ_u²`` (float32, same shape as the weight, keyed by the plain model's
    parameter name); ``num_tokens`` is ``Σ_u n_u`` (predicted tokens) and ``num_sequences`` the
    number of sequences seen. Use :meth:`normalised` for the per-token Fisher.
    """

    sums: dict[str, torch.Tensor]
    num_tokens: int
    num_sequences: int
    estimator: str = "per_batch"
    dataset: str = ""
    fingerprint: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def normalised(self) -> dict[str, torch.Tensor]:
        """Fisher per predicted token: ``sums / num_tokens`` (what FLoRA compares across sets)."""
        if self.num_tokens <= 0:
            raise UnlearnkitError(f'The Fisher of "{self.dataset}" saw no tokens; give it a non-empty set '
                                  "of token blocks.")
        return {k: v / self.num_tokens for k, v in self.sums.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.sums[name]

    def keys(self) -> Iterable[str]:
        return self.sums.keys()


@contextmanager
def only_these_require_grad(model: torch.nn.Module, params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Temporarily make exactly ``params`` trainable (so backward skips every other weight grad).

    Restores every ``requires_grad`` flag and every module's train/eval mode on exit.
    """
    saved = [(p, p.requires_grad) for p in model.parameters()]
    # Per-module modes: a fresh PEFT wrapper reports training=True around an eval-mode model, so a
    # single model.train(flag) on exit would switch dropout on inside it.
    modes = [(m, m.training) for m in model.modules()]
    keep = {id(p) for p in params}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
            p.grad = None
        for m, mode in modes:
            m.training = mode


def _sum_token_loss(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL of a batch and its number of predicted tokens."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    loss = token_nll(logits, labels, reduction="sum", dtype=torch.float32)
    return loss, int((labels[:, 1:] != IGNORE_INDEX).sum())


def empirical_fisher(
    model: torch.nn.Module,
    weight_names: Iterable[str],
    blocks: TokenBlocks,
    batch_size: int = 8,
    estimator: str = "per_batch",
    progress: bool = False,
    processes: Processes = SINGLE,
) -> FisherResult:
    """Empirical Fisher of the target weights over ``blocks`` (paper Eq. 2), see module docstring.

    ``weight_names`` are PEFT-style module suffixes (``["q_proj", "c_fc"]``) or full parameter
    names. The model runs in eval mode (no dropout noise in the importances); only the target
    weights require grad during the pass and every ``requires_grad`` flag is restored afterwards.
    Works on a plain model or on a PEFT model (then the base layers' weights are measured). On several
    ``processes`` each computes every ``count``-th unit and the sums and token counts are all-reduced: every
    process gets the single-process Fisher (up to the order of float additions).
    """
    if estimator not in ESTIMATORS:
        raise UnlearnkitError(f'Unknown Fisher estimator "{estimator}"; choose one of: '
                              f'{", ".join(ESTIMATORS)}.')
    if len(blocks) == 0:
        raise UnlearnkitError(f'The token blocks "{blocks.name}" are empty; the Fisher pass needs at least '
                              "one sequence.")
    if batch_size < 1:
        raise UnlearnkitError(f"Fisher batch size must be at least 1 (got {batch_size}).")
    params = target_parameters(model, weight_names)
    fingerprint = model_fingerprint(model, params)
    device = next(iter(params.values())).device
    sums = {name: torch.zeros(p.shape, dtype=torch.float32, device=device) for name, p in params.items()}
    step = 1 if estimator == "per_sequence" else batch_size
    total_tokens = 0
    with only_these_require_grad(model, params.values()):
        model.eval()
        for unit in processes.units(-(-len(blocks) // step)):
            start = unit * step
            part = blocks.subset(list(range(start, min(start + step, len(blocks))))).trimmed()
            loss, n = _sum_token_loss(model, part.input_ids.to(device), part.attention_mask.to(device),
                                      part.labels().to(device))
            if n == 0:
                continue  # a fully padded unit carries no information (and would divide by zero)
            # ∇(sum/n) = ḡ_u; accumulate n·ḡ_u² in fp32 and drop the grad at once.
            (loss / n).backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name].add_(p.grad.float().square().mul_(n))
                    p.grad = None
            total_tokens += n
            if progress:
                print(f"fisher[{blocks.name}] {min(start + step, len(blocks))}/{len(blocks)} sequences")
    counted = processes.sum({**sums, "\0tokens": torch.tensor([float(total_tokens)], device=device)})
    total_tokens = int(counted.pop("\0tokens").item())
    sums = counted
    if total_tokens == 0:
        raise UnlearnkitError(f'The token blocks "{blocks.name}" contain no predictable tokens (all padding '
                              "or length 1); give the Fisher pass real sequences.")
    return FisherResult(sums=sums, num_tokens=total_tokens, num_sequences=len(blocks), estimator=estimator,
                        dataset=blocks.name, fingerprint=fingerprint)


def save_fisher(result: FisherResult, path: str | os.PathLike[str]) -> None:
    """Write ``result`` as safetensors (tensors + metadata), atomically (temp file + rename)."""
    metadata = {
        "format": "unlearnkit.fisher", "version": FORMAT_VERSION, "estimator": result.estimator,
        "num_tokens": str(result.num_tokens), "num_sequences": str(result.num_sequences),
        "dataset": result.dataset, "model_fingerprint": result.fingerprint,
        "extra": json.dumps(result.metadata),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.sums.items()}
    atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))


def load_fisher(path: str | os.PathLike[str], model: torch.nn.Module | None = None,
                weight_names: Iterable[str] | None = None, estimator: str | None = None) -> FisherResult:
    """Read a Fisher written by :func:`save_fisher`; with ``model``, check it fits that model.

    The saved names must be exactly the model's target weights (``weight_names``, or every saved
    name when omitted) with the same shapes, else :class:`UnlearnkitError`; a different estimator
    also raises; a different model fingerprint only warns.
    """
    path = Path(path)
    if not path.is_file():
        raise UnlearnkitError(f"Fisher file {path} does not exist; compute it first or fix the path.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sums = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise UnlearnkitError(f"Cannot read Fisher file {path} ({exc}); delete it to recompute.") from exc
    if meta.get("format") != "unlearnkit.fisher":
        raise UnlearnkitError(f"{path} is not an unlearnkit Fisher file; point fisher_path at one written by "
                              "save_fisher or delete it.")
    result = FisherResult(sums=sums, num_tokens=int(meta["num_tokens"]),
                          num_sequences=int(meta["num_sequences"]),
                          estimator=meta.get("estimator", "per_batch"), dataset=meta.get("dataset", ""),
                          fingerprint=meta.get("model_fingerprint", ""),
                          metadata=json.loads(meta.get("extra", "{}")))
    if estimator is not None and result.estimator != estimator:
        raise UnlearnkitError(f'Fisher file {path} used estimator "{result.estimator}" but "{estimator}" was '
                              "requested; delete the file or request the same estimator.")
    if model is not None:
        params = target_parameters(model, weight_names if weight_names is not None else list(sums))
        _check_fits(path, sums, params)
        if result.fingerprint and model_fingerprint(model, params) != result.fingerprint:
            warnings.warn(f"Fisher file {path} was computed on different weights than this model's; "
                          "delete it to recompute if the model changed.", stacklevel=2)
    return result


def _check_fits(path: Path, sums: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> None:
    missing = sorted(set(params) - set(sums))
    extra = sorted(set(sums) - set(params))
    if missing or extra:
        what = f"lacks {missing[:3]}" if missing else f"has weights the model lacks: {extra[:3]}"
        raise UnlearnkitError(f"Fisher file {path} does not match the model's target modules (it {what}); "
                              "delete it to recompute for this model.")
    for name, p in params.items():
        if tuple(sums[name].shape) != tuple(p.shape):
            raise UnlearnkitError(f"Fisher file {path} has shape {tuple(sums[name].shape)} for {name} but "
                                  f"the model's weight is {tuple(p.shape)}; delete it to recompute for this "
                                  "model.")
