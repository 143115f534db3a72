"""Experiment tracking (``log.to``): a run reported to TensorBoard, Weights & Biases, MLflow, ... through
accelerate's trackers. The loop tells it three things: each optimiser update's losses and learning rate, each
epoch's record, the scores after unlearning; the config goes in as hyper-parameters when the run starts."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from unlearnkit.config import RunConfig
from unlearnkit.errors import UnlearnkitError

#: the package each tracker needs (what ``pip install`` brings)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
            "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}


def check_trackers(config: RunConfig) -> None:
    """One sentence for a tracker whose package is missing, before any work."""
    for name in config.log.to:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UnlearnkitError(f"log.to names {name}, which is not installed; pip install {PACKAGES[name]} (or "
                                  f"remove it from log.to).")


def log_dir(config: RunConfig) -> Path:
    """Where file-based trackers write: ``log.dir``, else ``logs/`` beside the output directory (which a run
    writes whole, at the end), one folder per run inside."""
    return Path(config.log.dir).expanduser() if config.log.dir else Path(config.output.dir).expanduser().parent / "logs"


def start(accelerator: Any, config: RunConfig) -> None:
    """Open the trackers of ``accelerator`` (built with ``log_with``) with the config as hyper-parameters, the run
    named after its output directory (a sweep's points: one run each)."""
    if not config.log.to:
        return
    run_name = Path(config.output.dir).name
    init: dict[str, dict[str, str]] = {name: {"name": run_name} for name in ("wandb", "comet_ml", "clearml")
                                       if name in config.log.to}
    if "mlflow" in config.log.to:
        init["mlflow"] = {"run_name": run_name}
    accelerator.init_trackers(config.log.project if "tensorboard" not in config.log.to else run_name,
                              config=hyperparameters(config), init_kwargs=init)


def hyperparameters(config: RunConfig) -> dict[str, Any]:
    """The resolved config, flattened to ``section.key`` scalars (what every tracker accepts)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        elif value is not None:
            flat[prefix] = str(value)

    walk("", config.model_dump(mode="json"))
    return flat


def scalars(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (nested dictionaries flattened), under ``prefix/``."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(scalars(f"{prefix}/{key}", value))
        elif isinstance(value, bool) or isinstance(value, (int, float)) and math.isfinite(value):
            out[f"{prefix}/{key}"] = float(value)
    return out


def log(accelerator: Any, config: RunConfig, prefix: str, values: dict[str, Any], step: int) -> None:
    if config.log.to:
        accelerator.log(scalars(prefix, values), step=step)


def finish(accelerator: Any, config: RunConfig) -> None:
    """Close the trackers. Not ``accelerator.end_training()``: it also takes down the process group, which a run
    on several processes still needs (the main one writes the outputs while the others wait for it)."""
    if config.log.to:
        for tracker in accelerator.trackers:
            tracker.finish()
