"""Atomic writes and self-describing output directories.

Nothing a run produces appears half-written: files are written to a temporary name and
renamed, and a whole run is assembled in a hidden staging directory that replaces the
output directory only when everything in it is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def check_output_dir(directory: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty output directory unless overwriting was asked for."""
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise UnlearnkitError(f"The output path {directory} is a file; choose a directory with output.dir.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise UnlearnkitError(
            f"The output directory {directory} is not empty; choose another output.dir or pass --overwrite."
        )
    return directory


@contextmanager
def staged_directory(directory: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory that atomically becomes ``directory`` when the block succeeds."""
    final = check_output_dir(directory, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the output is an ordinary directory
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model_to_cache(directory: Path, model: Any, tokenizer: Any, info_name: str, info: dict[str, Any]) -> None:
    """Write ``model/`` (weights + tokenizer) and ``info_name`` into ``directory``, atomically.

    Caches are keyed by their settings, so an existing directory is an incomplete earlier attempt
    or a concurrent build that finished first; either way the fresh copy replaces it.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging / "model")
    tokenizer.save_pretrained(staging / "model")
    atomic_write_json(staging / info_name, info)
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)
