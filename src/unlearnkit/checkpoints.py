"""Per-epoch checkpoints of a run, and resuming from them exactly (on accelerate's ``save_state``).

A run whose output directory is ``runs/x`` keeps its checkpoint beside it, hidden like the staging
directories: ``runs/.x.checkpoint/``. After set-up and after every epoch the loop saves one
``epoch-K/`` directory there, assembled in a staging directory and then named in ``latest.json``
(written atomically), so a kill at any moment leaves the last complete checkpoint readable. Each holds
what the next epoch needs and nothing more:

* accelerate's ``save_state``: the trainable weights (a pre-hook drops the frozen ones), optimiser and
  scheduler state and every RNG state;
* ``loop.safetensors``: the loop's batch-order generator and FLoRA's initial factors, from which the
  residual base ``W − B₀A₀`` is re-derived bit for bit (no gradients: an optimisation step never crosses
  an epoch's end, :mod:`unlearnkit.steps`);
* ``state.json``: the run's state (epoch, history, warnings), the snapshot before unlearning, the
  thresholds and the other numbers the loop carries from epoch to epoch; ``config.yaml``: the config.

Resuming loads the model as a fresh run does and then replaces every piece of state by the saved one,
so the resumed run continues with the same weights, batches and random numbers as an uninterrupted
run: on a CPU the final weights are bit-identical. :func:`unlearnkit.outputs.write_run_outputs`
removes the checkpoint once the outputs are in place.

On several processes every process writes its part (accelerate's RNG state of each process, the main one
the weights, optimiser and the loop's tensors) into the main process's staging directory, and the main one
names it once all are done. A checkpoint resumes only on as many processes as saved it: each process takes
``train.batch_size`` rows a step, so another count would train another run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from unlearnkit.config import RunConfig
from unlearnkit.config.loading import build_config
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import atomic_write_json, atomic_write_text, remove_stale_staging, staged_directory
from unlearnkit.results import RunState

if TYPE_CHECKING:  # torch is imported where tensors are handled: finding and checking a checkpoint needs none
    import torch

    from unlearnkit.metrics.thresholds import Thresholds
    from unlearnkit.parallel import Processes

LATEST = "latest.json"
LOOP_TENSORS = "loop.safetensors"
# accelerate's file names for the first model's weights (SAFE_MODEL_NAME) and the RNG states
MODEL_WEIGHTS = "model.safetensors"


def launched_processes() -> int:
    """How many processes this run was launched on (``WORLD_SIZE``, set by ``accelerate launch`` and ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_first() -> bool:
    """Whether this is the first (or only) process of its launch (``RANK``): the one that claims the output
    directory, and the only one that removes or checks a checkpoint before the processes have met."""
    return os.environ.get("RANK", "0") == "0"


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Where the run writing ``output_dir`` keeps its checkpoint: ``.NAME.checkpoint`` beside it."""
    output = Path(output_dir).expanduser().resolve()
    return output.parent / f".{output.name}.checkpoint"


def comparable_config(config: RunConfig) -> str:
    """The config as YAML, without what may differ between an interrupted command and its re-run."""
    resolved = yaml.safe_load(config.to_yaml())
    resolved["output"].pop("overwrite", None)
    resolved["eval"].pop("after_el", None)  # the evaluation after unlearning only, none of what was trained
    return yaml.safe_dump(resolved, sort_keys=True)


@dataclass
class Saved:
    """One saved checkpoint: its directory, the epoch it was saved after (0: set-up done, no epoch yet) and
    the loop's state as ``state.json`` holds it."""

    directory: Path
    epoch: int
    payload: dict[str, Any]

    @property
    def state(self) -> RunState:
        return RunState(**self.payload["state"])

    @property
    def thresholds(self) -> Thresholds:
        from unlearnkit.metrics.thresholds import Thresholds

        values = dict(self.payload["thresholds"])
        values["ma_ci"], values["el_ci"] = tuple(values["ma_ci"]), tuple(values["el_ci"])
        return Thresholds(**values)

    @property
    def processes(self) -> int:
        """How many processes saved it (checkpoints from before that was recorded: one)."""
        return int(self.payload.get("processes", 1))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The loop's tensors (``loop.safetensors``), which the main process saved."""
        from safetensors.torch import load_file

        return load_file(str(self.directory / LOOP_TENSORS))

    def check_data(self, fingerprints: dict[str, str]) -> None:
        """Refuse to resume on data that changed since the checkpoint was saved."""
        if self.payload["data_fingerprints"] != fingerprints:
            raise UnlearnkitError(f"The data of the checkpoint in {self.directory} differ from this run's (a data "
                                  "file changed); start afresh with the config and --restart (unlearnkit run CONFIG "
                                  "--restart).")

    def loop_state(self) -> LoopState:
        """The loop's state as this checkpoint saved it; ``state.resumed_after`` records this epoch."""
        carried = {k: v for k, v in self.payload.items() if k not in ("state", "thresholds", "processes")}
        loop = LoopState(state=self.state, thresholds=self.thresholds, **carried, tensors=self.tensors())
        loop.state.resumed_after.append(self.epoch)
        return loop


class Checkpoints:
    """The checkpoint directory of one run (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def of(cls, config: RunConfig) -> Checkpoints:
        return cls(checkpoint_dir(config.output.dir))

    def latest(self) -> Saved | None:
        """The last complete checkpoint, or ``None`` when there is none."""
        pointer = self.directory / LATEST
        while pointer.is_file():
            latest: Any = None
            try:
                latest = json.loads(pointer.read_text(encoding="utf-8"))
                directory = self.directory / latest["directory"]
                payload = json.loads((directory / "state.json").read_text(encoding="utf-8"))
                return Saved(directory, int(latest["epoch"]), payload)
            except (OSError, ValueError, KeyError, TypeError) as error:
                # A run still writing may name a newer checkpoint and remove this one between the two reads:
                # read again when the pointer moved; a pointer that stays broken is an error.
                now = _read_pointer(pointer)
                if now is not None and now != latest:
                    continue
                raise UnlearnkitError(f"The checkpoint in {self.directory} cannot be read ({error}); start the run "
                                      "afresh with its config and --restart (unlearnkit run CONFIG --restart)."
                                      ) from None
        return None

    def saved_config(self) -> RunConfig:
        """The configuration of the run that wrote the latest checkpoint."""
        saved = self.latest()
        if saved is None:
            raise UnlearnkitError(f"There is no interrupted run to resume here (no checkpoint in {self.directory}); "
                                  "run its config instead.")
        return build_config(yaml.safe_load((saved.directory / "config.yaml").read_text(encoding="utf-8")))

    def resumable(self, config: RunConfig, processes: int | None = None) -> Saved | None:
        """The latest checkpoint when it was written by a run of ``config`` on ``processes`` processes (default:
        as many as this one was launched on); ``None`` when there is none.

        A checkpoint of another configuration is refused rather than silently replaced: it may hold hours
        of training.
        """
        processes = launched_processes() if processes is None else processes
        saved = self.latest()
        if saved is None:
            return None
        theirs = build_config(yaml.safe_load((saved.directory / "config.yaml").read_text(encoding="utf-8")))
        if comparable_config(theirs) != comparable_config(config):
            raise UnlearnkitError(
                f"{self.directory} holds a checkpoint (after epoch {saved.epoch}) of a run with another "
                f"configuration; resume it with `unlearnkit run --resume {config.output.dir}`, or pass --restart "
                "to discard it and start afresh.")
        if saved.processes != processes:
            raise UnlearnkitError(
                f"{self.directory} holds a checkpoint (after epoch {saved.epoch}) of this run on "
                f"{_count(saved.processes)} and this one has {_count(processes)}; each process takes "
                f"train.batch_size rows a step, so resume it on {_count(saved.processes)}, or start afresh with the "
                "config and --restart (unlearnkit run CONFIG --restart), which discards it.")
        return saved

    def save(self, epoch: int, config: RunConfig, accelerator: Any, loop: LoopState,
             processes: Processes | None = None) -> Saved:
        """Save the state after ``epoch`` and make it the latest checkpoint; older ones are removed after.
        On several processes every one of them calls this together; the main one's tensors are saved."""
        from safetensors.torch import save_file

        from unlearnkit.parallel import SINGLE

        processes = processes or SINGLE
        name = f"epoch-{epoch}"
        payload, tensors = {**loop.payload(), "processes": processes.count}, loop.tensors
        if processes.main:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.directory / name)
        handle = accelerator.register_save_state_pre_hook(_keep_trainable_weights)
        try:
            with (staged_directory(self.directory / name, replace=True) if processes.main
                  else contextlib.nullcontext(None)) as main_staging:
                staging = Path(processes.on_main(lambda: str(main_staging)))
                accelerator.save_state(str(staging))  # the main process's weights and optimiser, each one's RNG
                if processes.main:
                    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                              str(staging / LOOP_TENSORS))
                    atomic_write_json(staging / "state.json", payload)
                    atomic_write_text(staging / "config.yaml", config.to_yaml())
                processes.wait()  # every process's part is written before the main one names the directory
        finally:
            handle.remove()
        if processes.main:
            atomic_write_json(self.directory / LATEST, {"epoch": epoch, "directory": name})
            for older in self.directory.glob("epoch-*"):
                if older.name != name:
                    shutil.rmtree(older, ignore_errors=True)
        return Saved(self.directory / name, epoch, payload)

    def restore(self, saved: Saved, accelerator: Any, model: torch.nn.Module) -> None:
        """Load the trainable weights, optimiser, scheduler and RNG states of ``saved``."""
        from safetensors import safe_open

        # accelerate saves and loads the model it wrapped (DDP's keys would carry "module.")
        expected = sorted(n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad)
        weights = saved.directory / MODEL_WEIGHTS
        found = expected  # under FSDP accelerate saves every weight in its own format, and loads it strictly
        if weights.is_file():
            with safe_open(str(weights), framework="pt") as stored:
                found = sorted(stored.keys())
        if found != expected:
            raise UnlearnkitError(f"The checkpoint in {saved.directory} holds other trainable weights than this run "
                                  "has (the model or adapter changed); start afresh with the config and --restart "
                                  "(unlearnkit run CONFIG --restart).")
        accelerator.load_state(str(saved.directory), strict=False)

    def discard(self) -> None:
        """Remove the checkpoint (after the outputs are written, or on --restart)."""
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class LoopState:
    """What the loop carries from epoch to epoch, and a checkpoint saves: the run's state and thresholds, the
    snapshot before unlearning, the scores the last good epoch left, and the loop's tensors (its generator and
    FLoRA's initial factors). A resumed run continues from :meth:`Saved.loop_state`."""

    state: RunState
    thresholds: Thresholds
    before: dict[str, Any]
    data_fingerprints: dict[str, str]
    adapter_summary: dict[str, Any] | None = None
    check_before: float | None = None  # the collapse guard's LM loss before unlearning
    last_scores: dict[str, Any] | None = None  # forget-set scores of the model as the last good epoch left it
    timings: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # "generator", "flora/<name>"

    def payload(self) -> dict[str, Any]:
        """``state.json``: every field but the tensors (JSON values)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tensors"}
        return {**values, "state": dataclasses.asdict(self.state), "thresholds": dataclasses.asdict(self.thresholds)}


def _keep_trainable_weights(models: list[torch.nn.Module], weights: list[dict[str, torch.Tensor]],
                            output_dir: str) -> None:
    # accelerate saves each model's whole state dict; only the trainable weights change during a run
    # (the frozen ones are re-loaded from the model, and FLoRA's residual base re-derived).
    if not weights:  # FSDP: accelerate saves the sharded models itself, every weight
        return
    for model, state in zip(models, weights, strict=True):
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        for key in [k for k in state if k not in trainable]:
            del state[key]


def _count(processes: int) -> str:
    return "1 process" if processes == 1 else f"{processes} processes"


def _read_pointer(pointer: Path) -> Any:
    try:
        return json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
