"""What a run produced: its changing state while it trains, the result it returns to the caller, and the typed
form of what a run directory's ``metrics.json`` holds (:class:`RunMetrics`: snapshots, per-set scores).

Whether a run succeeded is decided here once (:func:`succeeded`), for the run that just finished and for one
read back from its directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from unlearnkit.config import RunConfig
    from unlearnkit.data.run_sets import RunData
    from unlearnkit.metrics.thresholds import Thresholds


#: what the model kept, as the snapshot's ``downstream`` part and every table name it: reasoning accuracy, dialogue
#: F1, Pile perplexity (Table 1's columns)
KEPT_KEYS = ("reasoning_acc", "dialogue_f1", "pile_ppl")


def succeeded(criterion_met: bool, diverged_epoch: int | None, collapsed_epoch: int | None) -> bool:
    """A run succeeded when it met the forgetting criterion without diverging or collapsing."""
    return bool(criterion_met) and diverged_epoch is None and collapsed_epoch is None


class SetScores(BaseModel):
    """MA (Eq. 8) and EL_n (Eq. 7) of one set: means and per sequence (``el`` is None where it was not scored)."""

    model_config = ConfigDict(extra="allow")

    name: str
    sequences: int
    ma: float
    el: float | None = None
    ma_per_sequence: list[float] = []
    el_per_sequence: list[float] | None = None


class Snapshot(BaseModel):
    """One evaluation snapshot (:func:`unlearnkit.evaluation.evaluation_snapshot`): each set's scores by role, and
    each metric's part under its key (``privacy``, ``downstream``, a user's own)."""

    model_config = ConfigDict(extra="allow")

    forget: SetScores | None = None
    validation: SetScores | None = None
    retain: SetScores | None = None
    privacy: dict[str, Any] | None = None
    downstream: dict[str, Any] | None = None

    def kept(self) -> dict[str, Any]:
        """What the model kept (:data:`KEPT_KEYS`; None where not measured)."""
        return {key: (self.downstream or {}).get(key) for key in KEPT_KEYS}


class RunMetrics(BaseModel):
    """A run's ``metrics.json`` (:func:`unlearnkit.reports.metrics_document` writes it), typed."""

    model_config = ConfigDict(extra="allow")

    stop_reason: str
    criterion_met: bool
    collapsed_epoch: int | None = None
    diverged_epoch: int | None = None
    warnings: list[str] = []
    resumed_after_epochs: list[int] = []
    thresholds: dict[str, Any]
    before: Snapshot
    epochs: list[dict[str, Any]] = []
    after: Snapshot
    epochs_run: int
    steps: int = 0
    tokens_seen: int = 0
    adapter: dict[str, Any] | None = None
    compute: dict[str, Any] = {}

    @property
    def success(self) -> bool:
        return succeeded(self.criterion_met, self.diverged_epoch, self.collapsed_epoch)

    @property
    def kept_epochs(self) -> list[dict[str, Any]]:
        """The epochs' records whose model the run kept: not that of an epoch the collapse guard undid."""
        return [e for e in self.epochs if e.get("epoch") != self.collapsed_epoch]

    def reasoning_change(self) -> dict[str, float | int] | None:
        """The paired change of reasoning from before to after unlearning
        (:func:`unlearnkit.metrics.harness.reasoning_change`), where both kept each item's result."""
        from unlearnkit.metrics.harness import change_where_kept

        return change_where_kept(*((snapshot.downstream or {}).get("reasoning") for snapshot in (self.before,
                                                                                               self.after)))


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
    def success(self) -> bool:
        return succeeded(self.state.criterion_met, self.state.diverged_epoch, self.state.collapsed_epoch)

    @property
    def merged(self) -> bool:
        return not hasattr(self.model, "merge_and_unload")

    def plain_model(self) -> Any:
        """The unlearned model with any adapter merged into its weights (PEFT's safe merge)."""
        if not self.merged:
            from unlearnkit.adapters.lora import merged_model

            self.model = merged_model(self.model)
        return self.model
