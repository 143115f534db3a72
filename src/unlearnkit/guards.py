"""What watches a run from beside the loop: the clock of its phases, and the guard that restores the last good
epoch when the loss diverges or the model collapses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch


class Clock:
    """Seconds per phase (``setup_s``, ``train_s``, ...) and since the run started, resumed runs included: the
    time a checkpoint recorded carries on."""

    def __init__(self, timings: dict[str, float] | None = None, elapsed_s: float = 0.0) -> None:
        self.timings: dict[str, float] = timings if timings is not None else {}
        self.started = time.perf_counter() - elapsed_s

    @contextlib.contextmanager
    def phase(self, key: str, replace: bool = False) -> Iterator[None]:
        """Add the seconds the block takes to ``key`` (or set them, with ``replace``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.timings[key] = seconds if replace else self.timings.get(key, 0.0) + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Guard:
    """A copy of the trainable weights as the last good epoch left them, restored when a later epoch diverged
    (a NaN or infinite loss) or wrecked the model (:func:`collapse`)."""

    def __init__(self, trainable: list[torch.nn.Parameter]) -> None:
        self.trainable = trainable
        self.keep()

    def keep(self) -> None:
        self.last_good = [p.detach().to("cpu", copy=True) for p in self.trainable]

    def restore(self) -> None:
        with torch.no_grad():
            for param, value in zip(self.trainable, self.last_good, strict=True):
                param.copy_(value.to(param.device))


def collapse(record: dict[str, Any], check_before: float | None, factor: float | None) -> str:
    """Why the epoch of ``record`` wrecked the model, or '' when it did not: a forget loss beyond 100 per item,
    or the LM loss of kept text above ``factor`` times its value before unlearning (GA at a large lr keeps a
    finite, ever more negative loss)."""
    if factor is None:
        return ""
    forget_loss = record.get("forget_loss")
    if forget_loss is not None and abs(forget_loss) > 100:
        return f"forget loss {forget_loss:.3g} per token"
    if check_before is not None and record["retain_check_loss"] > factor * max(check_before, 1e-6):
        return (f"LM loss on kept text {record['retain_check_loss']:.3g}, more than {factor:g} x its "
                f"{check_before:.3g} before unlearning")
    return ""
