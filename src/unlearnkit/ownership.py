"""What a command may write over: the one rule every file and directory unlearnkit writes goes through.

* Never an input of the command (model files, data files, the config, a Fisher cache, the data and cache
  directories), wherever it is named (``--json``, ``--out``, ``--output``, ``output.dir``), nor anything inside
  an input directory.
* Only what unlearnkit itself wrote, recognised by a marker only it writes: a directory it writes holds
  :data:`MARKER`, listing each file it put there with its size and modification time, so a file added or
  changed since (a user's notes, an edited config) makes the directory not ours to replace; a JSON file it
  writes on its own (``--json``) carries ``"written_by": "unlearnkit"``, a Markdown file :data:`MARKDOWN_MARK`
  as its first line. A file named ``run.json`` is not
  enough (run directories written before the marker are recognised by their ``run.json``'s content and by
  holding only what a run writes).

Everything else is refused with one sentence naming the path and what to do, before any expensive work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import atomic_write_json

MARKER = ".unlearnkit.json"
WRITTEN_BY = "unlearnkit"
MARKDOWN_MARK = "<!-- written by unlearnkit -->"
# What a run directory held before the marker existed (outputs.write_run_outputs), and a sequence of requests'
LEGACY_RUN_ENTRIES = {"adapter", "model", "config.yaml", "run.json", "metrics.json", "report.md"}
LEGACY_REQUESTS_ENTRIES = {"requests.json", "requests.md"}
LEGACY_REPORT_ENTRIES = {"table1.md", "table1.csv", "report.md", "figure2_compute.png", "figure3_rank.png",
                         "figure4_modules.png"}


def marked(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as a JSON document unlearnkit wrote on its own (``--json``): with ``"written_by"`` first."""
    return {"written_by": WRITTEN_BY, **data}


def mark_directory(directory: str | os.PathLike[str], kind: str) -> None:
    """Write :data:`MARKER` into ``directory``: every file below it, with its size and modification time. Call it
    after the last file is written, on a staging directory before it is moved into place, or on a directory
    that holds nothing but what this command just wrote."""
    root = Path(directory)
    files = {path.relative_to(root).as_posix(): _signature(path) for path in sorted(root.rglob("*"))
             if path.is_file() and not path.is_symlink() and not path.relative_to(root).as_posix().startswith(".")}
    atomic_write_json(root / MARKER, {"written_by": WRITTEN_BY, "kind": kind, "files": files})


def foreign_entries(directory: str | os.PathLike[str]) -> list[str]:
    """The files (or, without a marker, top-level entries) of ``directory`` that unlearnkit did not write or that
    changed since; empty for a directory that is wholly its own output."""
    root = Path(directory)
    listed = _marker_files(root)
    if listed is None:
        allowed = _legacy_entries(root)
        return sorted(p.name for p in root.iterdir() if p.name not in allowed and not p.name.startswith("."))
    foreign = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.name == MARKER or path.is_dir() and not path.is_symlink() or relative.startswith("."):
            continue
        if relative not in listed or path.is_symlink() or _signature(path) != listed[relative]:
            foreign.append(relative)
    return foreign


def check_replaceable(directory: str | os.PathLike[str], inputs: Iterable[Path], *, overwrite: bool,
                      option: str, overwrite_flag: str | None = "--overwrite") -> Path:
    """The resolved ``directory`` a command is about to write (replacing it with ``overwrite``), or one sentence
    saying why it may not: it is a file, holds or is an input, is not empty without ``overwrite`` (the command's
    ``overwrite_flag`` says so; ``None``: it has none), or holds anything unlearnkit did not write."""
    target = Path(directory).expanduser().resolve()
    _refuse_long_names(target, option)
    if target.exists() and not target.is_dir():
        raise UnlearnkitError(f"The output path {target} is a file; choose a directory with {option}.")
    _refuse_inputs(target, inputs, option, holds=True)
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise UnlearnkitError(f"The output directory {target} is not empty; choose another {option}"
                                  f"{f' or pass {overwrite_flag}' if overwrite_flag else ''}.")
        foreign = foreign_entries(target)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UnlearnkitError(f"The output directory {target} holds files unlearnkit did not write ({shown}), so "
                                  f"it will not be replaced; choose another {option} or move them out.")
    check_creatable(target, option)
    return target


def check_creatable(directory: Path, option: str) -> None:
    """Refuse a directory that cannot be created or written where it is named (the nearest existing folder must
    be writable; nothing is made there to find out), before the work whose outputs it would hold."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UnlearnkitError(f"The output directory {directory} cannot be created: {existing} is a file; choose "
                              f"another {option}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UnlearnkitError(f"The output directory {directory} cannot be created in {existing} (it is not "
                              f"writable); choose a writable {option}.")


def check_output_file(path: str | os.PathLike[str], inputs: Iterable[Path], *, option: str) -> Path:
    """The resolved file a command is about to write on its own (``--json``), or one sentence saying why it may
    not: a directory, an input or inside one, in a folder that is a file, or an existing file unlearnkit did not
    write."""
    target = Path(path).expanduser().resolve()
    _refuse_long_names(target, option)
    if target.is_dir():
        raise UnlearnkitError(f"{option} {target} is a directory; give a file name, e.g. {target / 'scores.json'}.")
    _refuse_inputs(target, inputs, option, holds=False)
    existing = target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UnlearnkitError(f"{option} {target} cannot be written: {existing} is a file; choose another path.")
    if target.exists() and not _written_by_us(target):
        raise UnlearnkitError(f"{option} {target} exists and unlearnkit did not write it, so it will not be replaced; "
                              "choose another path.")
    if not os.access(existing, os.W_OK):
        raise UnlearnkitError(f"{option} {target} cannot be written: {existing} is not writable; choose another "
                              "path.")
    return target


def check_output_files(directory: str | os.PathLike[str], names: Iterable[str], inputs: Iterable[Path], *,
                       option: str) -> Path:
    """The resolved ``directory`` a command writes the files ``names`` into (``eval.json``/``eval.md``, ...), or
    one sentence why it may not: a file, not creatable, or holding one of them that unlearnkit did not write."""
    target = Path(directory).expanduser().resolve()
    _refuse_long_names(target, option)
    if target.exists() and not target.is_dir():
        raise UnlearnkitError(f"The output path {target} is a file; choose a directory with {option}.")
    check_creatable(target, option)
    inputs = [Path(p) for p in inputs if Path(p).exists()]
    for name in names:
        check_output_file(target / name, inputs, option=option)
    return target


def _refuse_long_names(target: Path, option: str) -> None:
    longest = max(target.parts, key=len)
    if len(longest.encode()) > 255:  # the limit of every common file system
        raise UnlearnkitError(f"{option} names a file or folder of {len(longest.encode())} bytes, longer than a file "
                              "system allows (255); choose a shorter name.")


def _refuse_inputs(target: Path, inputs: Iterable[Path], option: str, *, holds: bool) -> None:
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if source == target or source in target.parents:
            raise UnlearnkitError(f"{option} {target} is {'' if source == target else 'inside '}an input of this "
                                  f"command ({source}); choose a path outside it.")
        if holds and target in source.parents:
            raise UnlearnkitError(f"The output directory {target} holds an input of this command ({source}); choose "
                                  f"an {option} outside it.")


def _signature(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def _marker_files(root: Path) -> dict[str, list[int]] | None:
    try:
        record = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("written_by") != WRITTEN_BY or not isinstance(record.get("files"),
                                                                                                  dict):
        return None
    return record["files"]


def _legacy_entries(root: Path) -> set[str]:
    """What a directory written before the marker may hold and still be unlearnkit's: a run's outputs when its
    ``run.json`` is a run's (it names unlearnkit's version), a sequence of requests' files and run directories, a
    sweep report's tables and figures beside its ``report.md``."""
    allowed: set[str] = set()
    if _legacy_run(root):
        allowed |= LEGACY_RUN_ENTRIES
    report = root / "report.md"
    if report.is_file() and report.read_text(encoding="utf-8", errors="replace").startswith("# Unlearning report"):
        allowed |= LEGACY_REPORT_ENTRIES
    if (root / "requests.json").is_file():
        allowed |= LEGACY_REQUESTS_ENTRIES | {p.name for p in root.glob("request-*") if _legacy_run(p)}
    return allowed


def _legacy_run(directory: Path) -> bool:
    try:
        run = json.loads((directory / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(run, dict) and WRITTEN_BY in (run.get("versions") or {})


def _written_by_us(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(1 << 24)
        if path.suffix == ".md":
            return text.startswith(MARKDOWN_MARK + "\n")
        document = json.loads(text)
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("written_by") == WRITTEN_BY
