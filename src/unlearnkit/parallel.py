"""A run on several processes (``accelerate launch`` or ``torchrun``: DDP, FSDP, DeepSpeed): which rows each
process takes, sums over processes, values that the main process computes for all of them, and the whole
model it computes them on.

accelerate does the distributing (process group, gradient all-reduce, sharding of weights and optimiser
state); this module only says how unlearnkit's own passes split their work. One process is the special case
of every function here: it takes every row, a sum over one process is the value itself, and it is the main
process, so a single-process run does exactly what it did before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among ``count`` processes (``index`` 0 is the main one)."""

    index: int = 0
    count: int = 1
    accelerator: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, accelerator: Any) -> Processes:
        return cls(accelerator.process_index, accelerator.num_processes, accelerator)

    @property
    def main(self) -> bool:
        return self.index == 0

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's part of ``rows``: consecutive, as equal as they can be (the first ones one longer)."""
        return rows.tensor_split(self.count)[self.index] if self.count > 1 else rows

    def units(self, total: int) -> range:
        """The units (batches, sequences) of ``total`` that this process computes: every ``count``-th one."""
        return range(self.index, total, self.count)

    def sum(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Element-wise sums of ``tensors`` over the processes (an all-reduce), the same on every process."""
        if self.count == 1:
            return tensors
        from accelerate.utils import reduce

        return dict(reduce(tensors, reduction="sum"))

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is finite on every process. On one process this is left to the optimisation
        step's own NaN guard, and the answer is ``True``."""
        if self.count == 1:
            return True
        bad = (~torch.isfinite(value.detach())).any().to(torch.float64).reshape(1)
        return float(self.sum({"nonfinite": bad})["nonfinite"].item()) == 0.0

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over the processes (of per-process losses, say)."""
        if self.count == 1:
            return values
        device = getattr(self.accelerator, "device", None)
        summed = self.sum({k: torch.tensor([v], dtype=torch.float64, device=device) for k, v in values.items()})
        return {k: float(v.item()) / self.count for k, v in summed.items()}

    def wait(self) -> None:
        """Wait until every process has come here (a barrier); nothing to wait for on one process."""
        if self.count > 1:
            self.accelerator.wait_for_everyone()

    def on_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run on the main process only, and its value on every process."""
        if self.count == 1:
            return compute()
        from accelerate.utils import broadcast_object_list

        holder = [compute() if self.main else None]
        broadcast_object_list(holder, from_process=0)
        return cast(T, holder[0])


SINGLE = Processes()


def refuse_unsupported_launch(accelerator: Any, gradient_point: dict[str, float | bool] | None = None) -> None:
    """Stop before any work on a launch this run cannot train correctly on: DeepSpeed ZeRO-3, which shards the
    weights in a way unlearnkit cannot gather for the main process's evaluation yet (FSDP can:
    :class:`WholeModel`); and FSDP or DeepSpeed for a forget gradient taken elsewhere than at θ
    (``gradient_point``: SAM, meta-unlearning, disruption masking), which needs each process's own gradients of
    the whole weights (``torch.autograd.grad``): FSDP keeps them away from the sharded weights and the method
    would silently train as without it."""
    from accelerate.utils import DistributedType

    from unlearnkit.errors import UnlearnkitError

    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3:
        raise UnlearnkitError("DeepSpeed ZeRO-3 is not supported yet: the criterion after each epoch runs on the "
                              "main process with the whole model; launch with FSDP (`unlearnkit configs cp "
                              "accelerate/fsdp fsdp.yaml`), which shards the weights too, or DeepSpeed ZeRO-2 "
                              "(accelerate/deepspeed-zero2).")
    engines = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed"}
    if gradient_point and accelerator.distributed_type in engines:
        options = ", ".join(f"method.{key}" for key in gradient_point)
        raise UnlearnkitError(f"{options} cannot run under {engines[accelerator.distributed_type]} yet: it takes "
                              "the forget gradient from each process's own gradients of the whole weights; launch "
                              "with DDP (`unlearnkit configs cp accelerate/ddp ddp.yaml`) or on one process.")


def checkpoints_supported(accelerator: Any) -> bool:
    """Whether a run saves checkpoints under this launch: on one process, under DDP and FSDP (accelerate saves
    and loads their states); not yet under DeepSpeed."""
    from accelerate.utils import DistributedType

    return bool(accelerator.distributed_type != DistributedType.DEEPSPEED)


def shards_weights(accelerator: Any) -> bool:
    """Whether each process holds only a part of the weights (FSDP)."""
    from accelerate.utils import DistributedType

    return bool(accelerator.distributed_type == DistributedType.FSDP)


class WholeModel:
    """The whole, plain model that the main process evaluates, from a model prepared by ``accelerator``.

    Without sharding it is the prepared model unwrapped (DDP's wrapper would start collectives on the main process
    alone). Under FSDP every process holds a shard, and a forward pass is a collective; so the main process keeps
    a plain copy ("twin", made before sharding, on its device: one more whole model in memory there) and every
    evaluation first gathers the current weights into it with accelerate's full state dict, on all processes.
    """

    def __init__(self, accelerator: Any, model: torch.nn.Module, processes: Processes) -> None:
        self.accelerator, self.processes = accelerator, processes
        self.sharded = shards_weights(accelerator)
        self.twin = copy.deepcopy(model) if self.sharded and processes.main else None

    def of(self, prepared: Any) -> Any:
        """The whole model holding ``prepared``'s current weights on the main process (every process must call
        this together under FSDP); the prepared model elsewhere, where it is not evaluated."""
        if not self.sharded:
            return self.accelerator.unwrap_model(prepared)
        state = self.accelerator.get_state_dict(prepared)  # the full weights, on the main process
        if self.twin is None:
            return prepared
        self.twin.load_state_dict(state, strict=True)
        return self.twin
