"""Forgetting thresholds: mean EL_n and MA on held-out text the model never saw (paper Section 4.1, App. B).

Unlearning has succeeded when the forget set's mean EL_n and mean MA both drop below these values. The
bootstrap intervals say how much the thresholds themselves would move with another held-out sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import torch

from unlearnkit.config import EvalConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.metrics.memorization import extraction_likelihood, memorization_accuracy


@dataclass(frozen=True)
class Thresholds:
    """Mean MA (Eq. 8) and EL_n (Eq. 7) over ``n_sequences`` held-out sequences from ``source``, each with a
    bootstrap 95% percentile interval ``(low, high)`` of the mean."""

    ma: float
    el: float
    n_sequences: int
    source: str
    n: int = 10
    ma_ci: tuple[float, float] = (float("nan"), float("nan"))
    el_ci: tuple[float, float] = (float("nan"), float("nan"))

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["ma_ci"], out["el_ci"] = list(self.ma_ci), list(self.el_ci)
        return out

    @classmethod
    def from_scores(cls, ma: torch.Tensor, el: torch.Tensor, source: str, n: int = 10, bootstrap: int = 1000,
                    seed: int = 0) -> Thresholds:
        """The means of per-sequence held-out MA and EL_n scores, each with its bootstrap interval."""
        ma, el = ma.double(), el.double()
        return cls(
            ma=float(ma.mean()), el=float(el.mean()), n_sequences=len(ma), source=source, n=n,
            # Different seeds for the two so the intervals are not computed from the same resamples by accident.
            ma_ci=bootstrap_ci(ma, bootstrap, seed), el_ci=bootstrap_ci(el, bootstrap, seed + 1),
        )

    def forgotten(self, ma: float, el: float) -> bool:
        """The stopping rule of Appendix B: both forget-set means at or below the held-out means."""
        return ma <= self.ma and el <= self.el


def bootstrap_ci(values: torch.Tensor, bootstrap: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling rows with replacement)."""
    values = values.double().flatten()
    if values.numel() == 0 or bootstrap <= 0:
        return (float("nan"), float("nan"))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, values.numel(), (bootstrap, values.numel()), generator=gen)
    means = values[idx].mean(dim=1)
    alpha = (1.0 - level) / 2.0
    low, high = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return (float(low), float(high))


def thresholds_from_holdout(
    model: torch.nn.Module,
    blocks: TokenBlocks,
    n: int = 10,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
) -> Thresholds:
    """Mean EL_n and MA of ``model`` on held-out ``blocks``, with bootstrap 95% intervals of each mean."""
    if len(blocks) == 0:
        raise UnlearnkitError(
            f'The held-out set "{blocks.name}" is empty; give it at least one sequence (32 as in the paper).'
        )
    ma = memorization_accuracy(model, blocks.input_ids, blocks.attention_mask, batch_size=batch_size,
                               scored_mask=blocks.loss_mask)
    el = extraction_likelihood(model, blocks.input_ids, n=n, attention_mask=blocks.attention_mask,
                               batch_size=batch_size, scored_mask=blocks.loss_mask)
    return Thresholds.from_scores(ma, el, blocks.name, n, bootstrap, seed)


def run_thresholds(options: EvalConfig, before: dict[str, Any], seed: int) -> Thresholds:
    """A run's thresholds: the config's where given, else the means of the held-out scores measured before
    unlearning (``before["validation"]``, Appendix B), with their bootstrap intervals."""
    given_ma, given_el, n = options.ma_threshold, options.el_threshold, options.el_n
    if given_ma is not None and given_el is not None:
        return Thresholds(ma=given_ma, el=given_el, n_sequences=0, source="config", n=n)
    held_out = before["validation"]
    measured = Thresholds.from_scores(torch.tensor(held_out["ma_per_sequence"], dtype=torch.float64),
                                      torch.tensor(held_out["el_per_sequence"], dtype=torch.float64),
                                      held_out["name"], n, options.bootstrap, seed)
    # A threshold the config gives replaces the measured one (its interval still describes the held-out set).
    return dataclasses.replace(measured, ma=given_ma if given_ma is not None else measured.ma,
                               el=given_el if given_el is not None else measured.el)
