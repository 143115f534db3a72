"""The showcase's model cache: where memorised demo models and testbeds live, and how an entry is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearnkit.io import atomic_write_json, cache_root, staged_directory

__all__ = ["cache_root", "save_model_to_cache"]


def save_model_to_cache(directory: Path, model: Any, tokenizer: Any, info_name: str, info: dict[str, Any]) -> None:
    """Write ``model/`` (weights + tokenizer) and ``info_name`` into ``directory``, which appears complete or not
    at all.

    Caches are keyed by their settings, so an existing directory is a concurrent build that finished
    first or one being rebuilt on purpose; either way the fresh copy replaces it.
    """
    with staged_directory(directory, replace=True) as staging:
        model.save_pretrained(staging / "model")
        tokenizer.save_pretrained(staging / "model")
        atomic_write_json(staging / info_name, info)
