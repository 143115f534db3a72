"""FLoRA's mathematics (Section 3.4, Eqs. 3-4): relative importance, row weights, weighted low-rank factors.

For a weight ``W`` (``[out, in]``, rows = output features) and per-token Fishers of the forget and the
retain set: ``F_rel = F_f / (F_r + eps)``; row weights ``w_i = sqrt(Σ_j F_rel[i, j])``; the closed-form
row-weighted rank-r approximation of Eq. 4 (``diag(w) W ≈ U S Vᵀ``, ``A = S^½ Vᵀ``,
``B = diag(w)^{-1} U S^½``), or the general element-wise problem of Eq. 3 by Srebro & Jaakkola's EM.
"""

from __future__ import annotations

import torch

from unlearnkit.errors import UnlearnkitError


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


#: ``svd="auto"`` uses the randomized SVD for layers at least this wide in both dimensions, at ranks up to
#: an eighth of that; benchmarks/README.md has the measured cost and Eq. 4 objective of both.
AUTO_RANDOMIZED_MIN_DIM = 512


def _rank_r_svd(matrix: torch.Tensor, rank: int, svd: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if svd == "auto":
        small = min(matrix.shape)
        svd = "randomized" if small >= AUTO_RANDOMIZED_MIN_DIM and rank <= small // 8 else "exact"
    if svd == "randomized" and rank < min(matrix.shape):
        # A few power iterations make the randomized range finder accurate for decaying spectra.
        q = min(rank + 8, min(matrix.shape))
        u, s, v = torch.svd_lowrank(matrix, q=q, niter=4)
        return u[:, :rank], s[:rank], v[:, :rank].T
    if svd not in ("exact", "randomized"):
        raise UnlearnkitError(f'Unknown SVD method "{svd}"; choose one of: auto, exact, randomized.')
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
