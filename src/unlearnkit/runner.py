"""One way to run: claim → check → resume → run → write, for ``unlearnkit run``, each point of a sweep, each
deletion request of a sequence and each run of the demo.

:func:`unlearn` holds the output directory against every other process, checks it, continues from the
run's checkpoint when there is one (``output.checkpoint``), runs the recipe (:func:`unlearnkit.loop.run_unlearning`)
and writes the outputs; it returns the result in memory with what ``metrics.json`` holds, typed, so a caller
never reads back what was just written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.checkpoints import Checkpoints, launched_first
from unlearnkit.config import RunConfig
from unlearnkit.loop import run_unlearning
from unlearnkit.modeling import LoadedModel
from unlearnkit.outputs import RunDirectory, check_output_dir, claim_output_dir, write_run_outputs
from unlearnkit.progress import Progress
from unlearnkit.reports import metrics_document
from unlearnkit.results import RunMetrics, RunResult


@dataclass
class FinishedRun:
    """A run carried out and written: its result (the unlearned model in memory), where its outputs are (None on
    the processes of a distributed run that do not write) and its metrics as written."""

    result: RunResult
    directory: Path | None
    metrics: RunMetrics


def unlearn(config: RunConfig, *, loaded: LoadedModel | Callable[[], LoadedModel] | None = None, console: Any = None,
            quiet: bool = False, restart: bool = False, skip_finished: bool = False,
            claim: bool = True) -> FinishedRun | None:
    """Claim the output directory, check it, resume from its checkpoint (or, with ``restart``, discard it), run
    and write. ``loaded``: a model the caller holds (copied, never modified), or a function that gives one once
    the directory is claimed. With ``skip_finished`` a directory that holds a finished run once claimed (another
    process finished it meanwhile) is left as it is and None returned. A directory another process holds raises
    :class:`unlearnkit.io.ClaimedElsewhere`. ``claim=False``: the caller holds the claim already (the demo's
    directory, which its first run writes)."""
    # a second run into the same directory is refused while this one writes it
    with claim_output_dir(config) if claim else contextlib.nullcontext():
        if skip_finished and RunDirectory(Path(config.output.dir).expanduser()).finished:
            return None
        check_output_dir(config)
        checkpoints = _checkpoints(config, restart)
        model = loaded() if callable(loaded) else loaded
        result = run_unlearning(config, loaded=model, console=console, quiet=quiet, checkpoints=checkpoints)
        directory = None
        if result.main_process:  # on several processes (accelerate launch, torchrun) the main one writes
            with Progress(console=console, quiet=quiet).status("Writing outputs"):
                directory = write_run_outputs(result)
    return FinishedRun(result, directory, RunMetrics.model_validate(metrics_document(result)))


def _checkpoints(config: RunConfig, restart: bool) -> Checkpoints | None:
    """The run's checkpoints, checked before any work: a checkpoint of another configuration is refused."""
    if not config.output.checkpoint:
        return None
    checkpoints = Checkpoints.of(config)
    # Of a distributed run's processes only the first, which holds the claim, touches the checkpoint before the
    # run starts: another launch's second process must not remove the checkpoint of a run still writing it.
    if launched_first():
        if restart:
            checkpoints.discard()
        checkpoints.resumable(config)
    return checkpoints
