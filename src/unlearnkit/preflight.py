"""Checking a run before any expensive work: every problem found at once, one sentence each.

``unlearnkit run`` calls :func:`check_run` after reading the config and before loading a single weight:
the output directory (:func:`unlearnkit.outputs.check_output_dir`), the files of ``file`` sources
(exist, readable, not empty), the Fisher cache path, the sizes of a step against the model's context and the
machine's memory, and the target modules and LoRA rank against the model's layer shapes — first from the stored
files' headers (``config.json``, safetensors, GGUF; no torch), then, once those pass, from a weightless skeleton
of the model (torch; seconds) for what the headers cannot say. What can only be known from the
weights or the tokenised text (an empty text after tokenisation, sequences shorter than EL's n + 1) is
still refused by the loop, before training.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from unlearnkit.config import RunConfig
from unlearnkit.errors import UnlearnkitError
from unlearnkit.model_names import is_gguf, locate_model
from unlearnkit.tracking import check_trackers

T = TypeVar("T")


def check_run(config: RunConfig, config_file: str | Path | None = None) -> Path:
    """The run's output directory when nothing is wrong; else one :class:`UnlearnkitError` listing every
    problem (one sentence and line each). ``config_file``: the YAML the config was read from, an input too."""
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
            attempt(partial(check_user_file, str(spec.path), data_dir, spec.text_field))
    problems.extend(config.adapter.adapter_class().problems(config.adapter))  # e.g. FLoRA's Fisher directory
    attempt(lambda: locate_model(config.model.name, config.model.gguf_file))  # a path that holds no model
    output_dir = attempt(lambda: check_output_dir(config, config_file))
    attempt(lambda: check_sizes(config))
    attempt(lambda: check_trackers(config))  # a tracker's package missing: before any weight loads
    attempt(lambda: _check_adapter_fits_stored(config))
    # torch for the weightless skeleton takes seconds: only once the cheap checks have passed
    if not problems:
        attempt(lambda: _check_adapter_fits(config))
    if problems or output_dir is None:
        raise UnlearnkitError("\n".join(dict.fromkeys(problems)))
    return output_dir


def check_sizes(config: RunConfig, memory_bytes: int | None = None) -> None:
    """``data.seq_len`` against the model's context, and the activations of one micro-step against the machine's
    memory (``memory_bytes``, default: this machine's), from the model's ``config.json`` (no torch, no weights).

    The estimate is a floor of what a training step holds for its backward pass, per token: the logits in fp32
    three times (logits, log-softmax, their gradient) and, per layer, 18 hidden-size vectors and the attention
    scores of every head (in ``model.dtype``). A micro-step takes ``train.batch_size`` forget rows and
    ``train.retain_batch_size`` retain rows; the retain rows are drawn with replacement, so their number is not
    bounded by the retain set, and a typo there is refused here rather than found by the out-of-memory killer.
    """
    from unlearnkit.model_names import model_shape

    shape = model_shape(config.model.name, config.model.gguf_file, config.model.revision)
    if shape is None:
        return
    seq_len = config.data.seq_len
    if shape.context is not None and seq_len > shape.context:
        raise UnlearnkitError(f"data.seq_len {seq_len} is longer than the model's context ({shape.context} "
                              f"positions); lower data.seq_len to at most {shape.context}.")
    width = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}[config.model.dtype]
    per_token = 3 * 4 * shape.vocab + shape.layers * width * (18 * shape.hidden + shape.heads * seq_len)
    retain_rows = (config.train.retain_batch_size or config.train.batch_size) if config.needs_retain() else 0
    rows = config.train.batch_size + retain_rows
    needed = rows * seq_len * per_token
    available = memory_bytes if memory_bytes is not None else _machine_memory()
    if available and needed > available:
        raise UnlearnkitError(
            f"train.batch_size {config.train.batch_size} and train.retain_batch_size {retain_rows} need about "
            f"{needed / 2**30:,.0f} GiB of activations for one step ({rows} rows of {seq_len} tokens), more than "
            f"this machine's {available / 2**30:,.0f} GiB of memory; lower them (train.grad_accum keeps the "
            "effective batch).")


def _machine_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _check_adapter_fits_stored(config: RunConfig) -> None:
    """Target modules and rank against a local model's stored weights (their safetensors or GGUF headers, no
    torch); the skeleton check that follows is the authoritative one, this one makes its refusals fast."""
    if not config.adapter.adapter_class().has_adapter:
        return
    import json

    from unlearnkit.targets import check_rank_fits, select_targets, stored_linear_layers

    if is_gguf(config.model.name, config.model.gguf_file):
        from unlearnkit.gguf_header import read_gguf_header

        try:
            folder, file, _ = locate_model(config.model.name, config.model.gguf_file)
        except UnlearnkitError:
            return
        header = read_gguf_header(Path(folder) / str(file))
        layers = header.linear_layers() if header is not None else None
        model_type = header.architecture if header is not None else ""
    else:
        layers = stored_linear_layers(config.model.name)
        config_file = Path(config.model.name).expanduser() / "config.json"
        if layers is None or not config_file.is_file():
            return
        try:
            model_type = str(json.loads(config_file.read_text(encoding="utf-8")).get("model_type", ""))
        except (OSError, ValueError):
            return
    if layers is None:
        return
    candidates = [name for name in layers if not name.endswith("lm_head")]
    check_rank_fits(layers, select_targets(candidates, config.adapter.modules, model_type), config.adapter.rank)


def _check_adapter_fits(config: RunConfig) -> None:
    """Target modules and rank against the layers of a weightless skeleton of the model (none is built for a GGUF
    file: its header was the check)."""
    if not config.adapter.adapter_class().has_adapter or is_gguf(config.model.name, config.model.gguf_file):
        return
    from unlearnkit.adapters.lora import check_lora_fits
    from unlearnkit.modeling import model_skeleton, resolve_target_modules

    skeleton = model_skeleton(config.model)
    if skeleton is not None:
        check_lora_fits(skeleton, resolve_target_modules(skeleton, config.adapter.modules), config.adapter.rank)
