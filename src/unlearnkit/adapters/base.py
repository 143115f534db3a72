"""What an adapter is to the loop and the outputs: how it makes a model trainable, what it computes before
training, what a resumed run restores, and what a run writes of it.

An adapter is a subclass of :class:`Adapter` in a module of :mod:`unlearnkit.adapters` (``none``, ``lora``,
``flora``: a module is an adapter by its file name) or a user's ``module:Class`` / ``file.py:Class``, named by
``adapter.name`` (:mod:`unlearnkit.config.plugins`). Its class attributes answer the configuration's questions
without torch (the learning rate a config gets, whether the retain set is needed); its methods import torch
inside themselves, so reading a config stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from unlearnkit.config import AdapterConfig
    from unlearnkit.data.run_sets import RunData
    from unlearnkit.parallel import Processes


@dataclass
class AdapterInit:
    """What an adapter's initialisation computed: a summary for ``metrics.json`` and the tensors a resumed run
    restores it from."""

    summary: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class Adapter:
    """The base of every adapter: LoRA-like adapters on the modules a config selects (``adapter.modules``,
    ``rank``, ``alpha``, ``dropout``), merged into the weights for ``model/`` and exported as a PEFT adapter."""

    description: ClassVar[str] = ""
    label: ClassVar[str] = ""  # in tables and figure legends ("LoRA"); "" for full fine-tuning
    paper_lr: ClassVar[float] = 2e-4  # the learning rate a config that gives none gets
    has_adapter: ClassVar[bool] = True  # False: the model's own weights train (nothing to export or merge)
    uses_retain: ClassVar[str | None] = None  # why its initialisation needs the retain set, if it does
    initialises: ClassVar[bool] = False  # computes something from the data before training (FLoRA's Fisher)
    key: ClassVar[str] = "adapter"  # its FLOP phase ("<key>_init") and its tensors in a checkpoint ("<key>/")
    export_note: ClassVar[str] = "."  # how the report ends the sentence that names the exported adapter

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config

    @classmethod
    def problems(cls, config: AdapterConfig) -> list[str]:
        """Problems of its options found without torch or weights (one sentence each)."""
        return []

    def attach(self, model: Any, method: Any) -> tuple[Any, list[str]]:
        """The model with what trains made trainable, given the method (``method.trains(module, adapter=)``
        says which modules it trains), and the names of the adapted modules."""
        raise NotImplementedError

    def initialising(self, data: RunData, seed: int) -> str:
        """What the status line says while :meth:`initialise` runs."""
        return f"Initialising the {self.label or 'adapter'}"

    def initialise(self, model: Any, data: RunData, *, seed: int, processes: Processes) -> AdapterInit:
        """Compute the adapter's starting point from the data (only where :attr:`initialises`)."""
        raise NotImplementedError

    def restore(self, model: Any, tensors: dict[str, torch.Tensor]) -> None:
        """Put back what :meth:`initialise` computed (a resumed run: from the checkpoint's tensors)."""

    def export(self, model: Any, directory: Path) -> None:
        """Write the trained adapter (a run's ``adapter/``) as a standard PEFT adapter."""
