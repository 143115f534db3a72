"""Checking a run before any expensive work: every problem found at once, one sentence each.

``unlearnkit run`` calls :func:`check_run` after reading the config and before loading a single weight:
the output directory (:func:`unlearnkit.outputs.check_output_dir`), the files of ``file`` sources
(exist, readable, not empty), the Fisher cache path, and the target modules and LoRA rank against the
model's layer shapes, read from a weightless skeleton of the model. What can only be known from the
weights or the tokenised text (an empty text after tokenisation, sequences shorter than EL's n + 1) is
still refused by the loop, before training.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from unlearnkit.config import RunConfig
from unlearnkit.errors import UnlearnkitError

T = TypeVar("T")


def check_run(config: RunConfig) -> Path:
    """The run's output directory when nothing is wrong; else one :class:`UnlearnkitError` listing every
    problem (one sentence and line each)."""
    from unlearnkit.data.catalog import resolve_data_dir
    from unlearnkit.data.files import check_user_file
    from unlearnkit.outputs import check_output_dir

    problems: list[str] = []

    def attempt(check: Callable[[], T]) -> T | None:
        try:
            return check()
        except UnlearnkitError as error:
            problems.append(str(error))
            return None

    data_dir = resolve_data_dir(config.data.dir)
    specs = [config.data.forget, config.data.retain if config.needs_retain() else None,
             config.data.validation if config.needs_validation() else None]
    for spec in specs:
        if spec is not None and spec.source == "file" and spec.path:
            attempt(partial(check_user_file, str(spec.path), data_dir))
    fisher_path = config.adapter.flora.fisher_path
    if config.adapter.name == "flora" and fisher_path and Path(fisher_path).expanduser().exists() and \
            not Path(fisher_path).expanduser().is_dir():
        problems.append(f"adapter.flora.fisher_path {fisher_path} is a file; give a directory for forget.safetensors "
                        "and retain.safetensors (`unlearnkit fisher --out DIR` writes one).")
    attempt(lambda: _check_adapter_fits(config))
    output_dir = attempt(lambda: check_output_dir(config))
    if problems or output_dir is None:
        raise UnlearnkitError("\n".join(dict.fromkeys(problems)))
    return output_dir


def _check_adapter_fits(config: RunConfig) -> None:
    """Target modules and rank against the layers of a weightless skeleton of the model."""
    if config.adapter.name == "none":
        return
    from unlearnkit.adapters.lora import check_lora_fits
    from unlearnkit.modeling import model_skeleton, resolve_target_modules

    skeleton = model_skeleton(config.model)
    if skeleton is not None:
        check_lora_fits(skeleton, resolve_target_modules(skeleton, config.adapter.modules), config.adapter.rank)
