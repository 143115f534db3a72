"""Writing a run's outputs — merged model, adapter, metrics, resolved config and report, as one directory — and
reading them back (:class:`RunDirectory`, the one reader beside the one writer).

The directory is assembled in a hidden staging directory and moved into place only when complete
(:func:`unlearnkit.io.staged_directory`), so a run never leaves half an output behind.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.checkpoints import Checkpoints, launched_first
from unlearnkit.config import RunConfig
from unlearnkit.io import atomic_write_json, atomic_write_text, claimed, remove_stale_staging, staged_directory
from unlearnkit.model_card import model_card
from unlearnkit.ownership import check_replaceable, mark_directory
from unlearnkit.reports import metrics_document, package_versions, render_report
from unlearnkit.results import RunMetrics, RunResult

CONFIG_FILE, RUN_FILE, METRICS_FILE, REPORT_FILE = "config.yaml", "run.json", "metrics.json", "report.md"


def check_output_dir(config: RunConfig, config_file: str | Path | None = None) -> Path:
    """The run's output directory, refused before any expensive work when the run may not write it there.

    Refused: a path that is a file or cannot be created (tried: a hidden directory is made and removed in
    the nearest existing folder); a directory that is, holds or lies inside one of the run's inputs (model,
    tokenizer, data directory, data files, Fisher cache, the ``config_file`` it was read from); a non-empty
    directory without
    ``output.overwrite``; and, even with it, a directory holding anything unlearnkit did not write
    (:func:`unlearnkit.ownership.check_replaceable`).
    """
    directory = Path(config.output.dir).expanduser().resolve()
    # a sequence of deletion requests (unlearnkit.sequential) continues in its own directory where it stopped
    continuing = bool(config.data.requests) and (directory / "requests.json").is_file()
    inputs = run_inputs(config) + ([Path(config_file).resolve()] if config_file is not None else [])
    return check_output_path(config.output.dir, inputs, overwrite=config.output.overwrite or continuing,
                             option="output.dir")


@contextmanager
def claim_output_dir(config: RunConfig) -> Iterator[None]:
    """Hold the run's output directory (its checkpoints and outputs) against every other process for the block
    (:func:`unlearnkit.io.claimed`); raises :class:`unlearnkit.io.ClaimedElsewhere` when another run holds it.
    Of the processes of one distributed run (``RANK``, set by ``accelerate launch`` and ``torchrun``) only the
    first claims, as only it writes."""
    with claimed(config.output.dir) if launched_first() else nullcontext():
        yield


def check_output_path(path: str | Path, inputs: list[Path], *, overwrite: bool, option: str) -> Path:
    """:func:`check_output_dir` for any command writing a directory of outputs (``option`` names where the
    user sets it): the resolved directory, or one sentence saying why it may not be written."""
    return check_replaceable(path, inputs, overwrite=overwrite, option=option)


def run_inputs(config: RunConfig) -> list[Path]:
    """The local files and folders a run reads (resolved): what no output may replace."""
    from unlearnkit.data.catalog import resolve_data_dir

    data_dir = resolve_data_dir(config.data.dir)
    candidates = [Path(config.model.name).expanduser(), data_dir]
    if config.model.tokenizer:
        candidates.append(Path(config.model.tokenizer).expanduser())
    for spec in (config.data.forget, config.data.retain, config.data.validation):
        if spec is not None and spec.path:
            given = Path(spec.path).expanduser()
            candidates.append(given if given.exists() else data_dir / given)
    if config.adapter.flora.fisher_path:
        candidates.append(Path(config.adapter.flora.fisher_path).expanduser())
    return [path.resolve() for path in candidates if path.exists()]


def write_run_outputs(result: RunResult) -> Path:
    """Write ``result`` to ``result.config.output.dir``: ``adapter/`` (when one was trained), ``model/`` (adapter
    merged; unless ``output.save_model`` is off), ``config.yaml``, ``run.json``, ``metrics.json``, ``report.md``.

    The run's checkpoint (:mod:`unlearnkit.checkpoints`) is removed once the outputs are in place.
    Afterwards ``result.model`` is the merged plain model when ``model/`` was written.
    """
    from unlearnkit.adapters import build_adapter

    config = result.config
    final = check_output_dir(config)
    # only under the directory's claim (claim_output_dir): on a shared filesystem a staging directory whose
    # process is not alive here may belong to a live process on another machine
    for stale in remove_stale_staging(final):
        warnings.warn(f"Removed {stale}, left behind by an earlier run that was killed while writing.",
                      stacklevel=2)
    adapter = build_adapter(config.adapter)
    if adapter.has_adapter and result.merged:
        raise ValueError("the adapter was already merged into the model; write the outputs before plain_model()")
    with staged_directory(final, replace=True) as staging:
        if adapter.has_adapter:
            adapter.export(result.model, staging / "adapter")
        if config.output.save_model:
            result.plain_model().save_pretrained(staging / "model", safe_serialization=True)
            result.tokenizer.save_pretrained(staging / "model")
        atomic_write_text(staging / CONFIG_FILE, config.to_yaml())
        facts = {
            "seed": config.seed,
            "versions": package_versions(),
            "data_fingerprints": result.data.fingerprints(),
            "data_ids": {"forget": result.data.forget.ids},
            "target_modules": result.target_modules,
            # forget sequences per optimiser update: per process x processes x accumulation
            "batch": {"per_process": config.train.batch_size, "processes": result.processes,
                      "grad_accum": config.train.grad_accum,
                      "effective": config.train.batch_size * result.processes * config.train.grad_accum},
            "launch": result.launch,
            "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        }
        atomic_write_json(staging / RUN_FILE, facts)
        document = metrics_document(result)
        atomic_write_json(staging / METRICS_FILE, document)
        if config.output.save_model:  # the record filed beside the model: what was removed, how, the evidence
            metrics = RunMetrics.model_validate(json.loads((staging / METRICS_FILE).read_text(encoding="utf-8")))
            atomic_write_text(staging / "model" / "README.md", model_card(config, metrics, facts))
        atomic_write_text(staging / REPORT_FILE, render_report(result))
        mark_directory(staging, "run")
    Checkpoints.of(config).discard()  # the run is complete: nothing is left to resume
    return final


@dataclass(frozen=True)
class RunDirectory:
    """A directory :func:`write_run_outputs` wrote, read back: its configuration, metrics (typed), facts of the
    run (``run.json``), and where its model and adapter are."""

    path: Path

    @property
    def finished(self) -> bool:
        """The run finished and wrote its outputs (``run.json`` is written with them, atomically)."""
        return (self.path / RUN_FILE).is_file()

    def config(self) -> RunConfig:
        import yaml

        from unlearnkit.config import build_config

        return build_config(yaml.safe_load((self.path / CONFIG_FILE).read_text(encoding="utf-8")))

    def metrics(self) -> RunMetrics:
        return RunMetrics.model_validate_json((self.path / METRICS_FILE).read_text(encoding="utf-8"))

    def run_facts(self) -> dict[str, Any]:
        """``run.json``: versions, seed, data fingerprints and forget ids, target modules, batch, timings."""
        facts: dict[str, Any] = json.loads((self.path / RUN_FILE).read_text(encoding="utf-8"))
        return facts

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"
