"""The configs shipped inside the package, found by name from any directory, and ``base:``: a config that starts
from another and states only what differs. Imports no torch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError, did_you_mean

SHIPPED = Path(__file__).resolve().parent.parent / "configs"
SUFFIXES = (".yaml", ".yml")


def shipped_configs() -> list[str]:
    """Every shipped config's name (its path under the package's ``configs/``, without the suffix), sorted."""
    return sorted(str(path.relative_to(SHIPPED).with_suffix("")) for path in SHIPPED.rglob("*")
                  if path.suffix in SUFFIXES and path.is_file())


def shipped_path(name: str) -> Path | None:
    """The file of the shipped config NAME (``paper/gpt-neo-125m-flora-ihl``, with or without ``.yaml``)."""
    stem = name.removeprefix("configs/")
    for candidate in (stem, *(stem + suffix for suffix in SUFFIXES)):
        path = SHIPPED / candidate
        if path.suffix in SUFFIXES and path.is_file() and path.resolve().is_relative_to(SHIPPED):
            return path
    return None


def find_config(reference: str | Path, here: Path | None = None, what: str = "config") -> Path:
    """A config file from a reference: a path (relative to ``here``, the directory of the file that names it, or
    to the working directory) or else a shipped config's name. A reference that is neither is one sentence."""
    text = str(reference)
    given = Path(text).expanduser()
    path = given if here is None or given.is_absolute() else here / given
    if path.is_file():
        return path
    if path.is_dir():
        raise UnlearnkitError(f"The {what} {text} is a directory; pass the path of a YAML file in it or the name of "
                              "a shipped config (`unlearnkit configs` lists them).")
    shipped = shipped_path(text)
    if shipped is not None:
        return shipped
    where = f" (looked for {path.resolve()})" if here is not None else ""
    raise UnlearnkitError(f"The {what} {text} does not exist{where}, as a file or as a shipped config; pass a YAML "
                          f"file's path or a name that `unlearnkit configs` lists."
                          f"{did_you_mean(text.removesuffix('.yaml'), shipped_configs())}")


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` laid over ``base``: mappings merge key by key, anything else is replaced. A mapping that names
    another ``source`` (a data set) or, under ``method``, another method ``name`` replaces the base's whole: the
    keys of one source or method mean nothing to another."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict) and not _starts_afresh(key, below, value):
            merged[key] = merge(below, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _starts_afresh(key: str, base: dict[str, Any], changes: dict[str, Any]) -> bool:
    if "source" in changes and changes["source"] != base.get("source"):
        return True
    return key == "method" and "name" in changes and changes["name"] != base.get("name")
