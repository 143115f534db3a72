"""Writing a run's outputs: merged model, adapter, metrics, resolved config and report, as one directory.

The directory is assembled in a hidden staging directory and moved into place only when complete
(:func:`unlearnkit.io.staged_directory`), so a run never leaves half an output behind.
"""

from __future__ import annotations

from pathlib import Path

from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import atomic_write_json, atomic_write_text, staged_directory
from unlearnkit.reports import metrics_document, package_versions, render_report
from unlearnkit.results import RunResult


def check_output_dir(directory: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty output directory unless overwriting was asked for (call it before expensive work)."""
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise UnlearnkitError(f"The output path {directory} is a file; choose a directory with output.dir.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise UnlearnkitError(
            f"The output directory {directory} is not empty; choose another output.dir or pass --overwrite."
        )
    return directory


def write_run_outputs(result: RunResult) -> Path:
    """Write ``result`` to ``result.config.output.dir``: ``adapter/`` (when one was trained), ``model/`` (adapter
    merged; unless ``output.save_model`` is off), ``config.yaml``, ``run.json``, ``metrics.json``, ``report.md``.

    Afterwards ``result.model`` is the merged plain model when ``model/`` was written.
    """
    from unlearnkit.adapters.flora import save_flora_adapter_for_original_base
    from unlearnkit.adapters.lora import save_lora_adapter

    config = result.config
    final = check_output_dir(config.output.dir, config.output.overwrite)
    adapter = config.adapter.name
    if adapter != "none" and result.merged:
        raise ValueError("the adapter was already merged into the model; write the outputs before plain_model()")
    with staged_directory(final, replace=True) as staging:
        if adapter == "lora":
            save_lora_adapter(result.model, staging / "adapter")
        elif adapter == "flora":
            save_flora_adapter_for_original_base(result.model, staging / "adapter")
        if config.output.save_model:
            result.plain_model().save_pretrained(staging / "model", safe_serialization=True)
            result.tokenizer.save_pretrained(staging / "model")
        atomic_write_text(staging / "config.yaml", config.to_yaml())
        atomic_write_json(staging / "run.json", {
            "seed": config.seed,
            "versions": package_versions(),
            "data_fingerprints": result.data.fingerprints(),
            "data_ids": {"forget": result.data.forget.ids},
            "target_modules": result.target_modules,
            "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        })
        atomic_write_json(staging / "metrics.json", metrics_document(result))
        atomic_write_text(staging / "report.md", render_report(result))
    return final
