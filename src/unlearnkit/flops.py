"""The compute a run spends, in FLOPs, counted with torch's own FLOP formulas (``torch.utils.flop_counter``).

The paper compares methods by the compute they spend until the model has forgotten (Figure 2). A run counts
three phases apart (:class:`FlopTally`): the training steps, FLoRA's initialisation (the Fisher passes and
the SVD of every target weight) and the evaluations of the stopping rule after each epoch. Counting every
training step would slow each of them, and every step of a run is the same computation on other tokens; so
the first step is counted and the phase is scaled by the tokens processed (:meth:`FlopTally.scale`). The
other phases are counted whole: their cost depends on what the model does (EL stops decoding early).

torch counts matrix products and attention; element-wise work, the optimiser and the embedding lookups are
left out, as in the usual 6 x parameters x tokens. ``linalg.svd`` has no formula in torch: the one here is
Golub & Van Loan's R-SVD count for a thin SVD with both factors (Matrix Computations, 4th ed., Fig. 8.6.1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper


def thin_svd_flops(a_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of a thin SVD of an m x n matrix with U and V (m >= n after transposing): 6mn² + 20n³, per matrix
    of a batch. The signature is torch's flop-formula convention (shapes of the op's arguments)."""
    *batch, rows, cols = a_shape
    long, short = max(rows, cols), min(rows, cols)
    matrices = 1
    for size in batch:
        matrices *= size
    return int(matrices * (6 * long * short * short + 20 * short**3))


FORMULAS = {**flop_registry, torch.ops.aten._linalg_svd: shape_wrapper(thin_svd_flops)}


class FlopCounter(TorchDispatchMode):
    """Sums torch's FLOP formulas (``torch.utils.flop_counter.flop_registry``, the ones ``FlopCounterMode`` uses)
    over the operations run inside it, plus the SVD formula above. ``FlopCounterMode`` itself also tracks the
    module each operation ran in, which made EL decoding on a small model 3.5x slower; this count is the same
    (tests/test_flops.py) at about half that cost."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def flop_counter() -> FlopCounter:
    return FlopCounter()


@dataclass
class FlopTally:
    """FLOPs per phase of a run; ``sample`` holds a counted step's FLOPs and tokens for :meth:`scale`."""

    flops: dict[str, float] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)  # phase -> (FLOPs, tokens); a list once read from JSON

    @contextlib.contextmanager
    def count(self, phase: str) -> Iterator[None]:
        """Add the FLOPs of the block to ``phase``."""
        with flop_counter() as counter:
            yield
        self.flops[phase] = self.flops.get(phase, 0.0) + float(counter.total)

    @contextlib.contextmanager
    def count_sample(self, phase: str, tokens: int) -> Iterator[None]:
        """Count the block as the sample of ``phase``: one step that processed ``tokens`` tokens."""
        with flop_counter() as counter:
            yield
        self.sample[phase] = [float(counter.total), tokens]

    def scale(self, phase: str, tokens: int) -> None:
        """Set ``phase`` to its sample's FLOPs per token times ``tokens`` (nothing when no step was counted)."""
        if phase in self.sample and self.sample[phase][1] > 0:
            sampled, sample_tokens = self.sample[phase]
            self.flops[phase] = sampled / sample_tokens * tokens

