"""What a run produced: its changing state while it trains and the result it returns to the caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unlearnkit.config import RunConfig
    from unlearnkit.data.run_sets import RunData
    from unlearnkit.metrics.thresholds import Thresholds


@dataclass
class RunState:
    """Everything that changes during a run, in one place (so it can be saved and restored)."""

    epoch: int = 0
    step: int = 0
    tokens_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    criterion_met: bool = False
    diverged_epoch: int | None = None
    collapsed_epoch: int | None = None
    warnings: list[str] = field(default_factory=list)
    resumed_after: list[int] = field(default_factory=list)
    """The epochs after which this run was interrupted and resumed from its checkpoint."""
    flops: dict[str, float] = field(default_factory=dict)  # per phase: unlearnkit.flops.FlopTally
    flops_sample: dict[str, Any] = field(default_factory=dict)  # the counted step of a phase: [FLOPs, tokens]


@dataclass
class RunResult:
    """The unlearned model and everything measured about it; :func:`unlearnkit.outputs.write_run_outputs`
    writes it.

    ``model`` is the model as trained: a PEFT model when an adapter was trained (its adapter is what
    the writer saves as ``adapter/``), else the plain model. :meth:`plain_model` merges the adapter
    into the weights, in place and once, and returns a plain transformers model; write the outputs
    before calling it, since the adapter is gone afterwards.
    """

    config: RunConfig
    state: RunState
    thresholds: Thresholds
    before: dict[str, Any]
    after: dict[str, Any]
    timings: dict[str, float]
    model: Any
    tokenizer: Any
    data: RunData
    target_modules: list[str]
    adapter_summary: dict[str, Any] | None = None
    processes: int = 1  # processes that trained it (accelerate launch / torchrun)
    main_process: bool = True  # False on the other processes: they hold the same model, and write nothing
    launch: dict[str, str] = field(default_factory=dict)  # accelerate's distributed type and mixed precision
    parameters: dict[str, int] = field(default_factory=dict)  # trainable and in the model as loaded (Params %)

    def compute(self) -> dict[str, Any]:
        """What the run cost: FLOPs per phase (:mod:`unlearnkit.flops`), tokens trained on, parameters trained
        (Table 1's "Params (%)": of the model as loaded) and seconds per phase."""
        parameters: dict[str, float] = dict(self.parameters)
        if parameters.get("model"):
            parameters["percent"] = 100.0 * parameters["trainable"] / parameters["model"]
        flops = {**self.state.flops, "total": float(sum(self.state.flops.values()))}
        return {"flops": flops, "tokens": {"train": self.state.tokens_seen},
                "parameters": parameters, "seconds": {k: round(v, 2) for k, v in self.timings.items()}}

    @property
    def merged(self) -> bool:
        return not hasattr(self.model, "merge_and_unload")

    def plain_model(self) -> Any:
        """The unlearned model with any adapter merged into its weights (PEFT's safe merge)."""
        if not self.merged:
            from unlearnkit.adapters.lora import merged_model

            self.model = merged_model(self.model)
        return self.model
