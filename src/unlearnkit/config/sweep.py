"""A sweep: one base config and a grid over config keys, expanded into named points; imports no torch.

A sweep file (``configs/*/sweeps/*.yaml``)::

    base: ../flora-ihl.yaml          # the config every point starts from (relative to this file)
    output: runs/sweeps/table1       # each point writes to OUTPUT/NAME (relative to where you run)
    set:                             # overrides for every point
      train.epochs: 20
    grid:                            # the points are every combination, the first axis outermost
      method:                        # an axis of named values: each a config file, or overrides,
        ga: ../ga.yaml               #   or both ({config: ../ga.yaml, train.lr: 1.0e-4})
        flora-ihl: ../flora-ihl.yaml
      data.forget:                   # an axis over one config key: a list of values ...
        set0: {source: jang, n: 32, set: 0}    # ... or named values when they are long
      adapter.rank: [4, 8]

A point is named from its values, ``method-ga__forget-set0__rank-4`` (each key's last part unless two
axes share it), so its directory says what it is and a re-run finds it again.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unlearnkit.config.catalogue import find_config
from unlearnkit.config.loading import read_yaml
from unlearnkit.errors import UnlearnkitError

CONFIG_SUFFIXES = (".yaml", ".yml")


class SweepConfig(BaseModel):
    """A sweep file as written; :func:`load_sweep` expands it."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = Field(None, description="the config every point starts from, relative to the sweep file")
    output: str | None = Field(None, description="directory of the points (default runs/sweeps/<file name>)")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for every point: key: value")
    grid: dict[str, list[Any] | dict[str, Any]] = Field(description="axis: values (a list, or name: value)")

    @field_validator("grid")
    @classmethod
    def _axes_have_values(cls, grid: dict[str, Any]) -> dict[str, Any]:
        if not grid:
            raise ValueError("give at least one axis, e.g. grid: {adapter.rank: [4, 8]}")
        for axis, values in grid.items():
            if not values:
                raise ValueError(f"the axis {axis!r} has no values")
        return grid


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its name, its value on each axis, its config file and its overrides."""

    name: str
    axes: dict[str, Any]
    config: Path | None
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sweep:
    path: Path
    output: Path
    points: list[SweepPoint]

    def shard(self, index: int, count: int, select: str | None = None) -> list[SweepPoint]:
        """The points shard ``index`` of ``count`` runs: every ``count``-th one, so shards never overlap; with
        ``select``, only the points named like that shell-style pattern are dealt out."""
        chosen = [point for point in self.points if select is None or fnmatchcase(point.name, select)]
        if select is not None and not chosen:
            raise UnlearnkitError(f"No point of {self.path} is named like {select}; change --select (see the "
                                  "names with --dry-run).")
        return chosen[index::count]


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep file; every problem is one sentence naming the fix (before any run)."""
    path = find_config(path, what="sweep file")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
        sweep = SweepConfig.model_validate(raw if raw is not None else {})
    except yaml.YAMLError as error:
        raise UnlearnkitError(f"The sweep file {path} is not valid YAML ({str(error).splitlines()[0]}); fix its "
                              "syntax.") from None
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "the top level"
        raise UnlearnkitError(f"The sweep file {path} is invalid at {where}: "
                              f"{problem['msg'].removeprefix('Value error, ')}.") from None
    here = path.parent
    base = _config_file(here, sweep.base, "base") if sweep.base else None
    axes = [_axis_values(here, axis, values) for axis, values in sweep.grid.items()]
    short = _short_names(list(sweep.grid))
    output = Path(sweep.output) if sweep.output else Path("runs") / "sweeps" / path.stem
    points, seen = [], {}
    for combination in itertools.product(*axes):
        config, overrides, labels = base, [_override(k, v) for k, v in sweep.set.items()], {}
        for axis, (label, settings) in zip(sweep.grid, combination, strict=True):
            labels[axis] = label
            for key, value in settings.items():
                if key == "config":
                    config = value
                else:
                    overrides.append(_override(key, value))
        name = "__".join(f"{short[axis]}-{_safe(label)}" for axis, label in labels.items())
        if name in seen:
            raise UnlearnkitError(f"Two points of {path} are both named {name!r}; give their values distinct names.")
        seen[name] = True
        overrides.append(_override("output.dir", str(output / name)))
        points.append(SweepPoint(name, labels, config, overrides))
    return Sweep(path, output, points)


def _config_file(here: Path, name: str, what: str) -> Path:
    """A config the sweep names: a path relative to the sweep file, or a shipped config's name."""
    return find_config(name, here=here, what=f"{what} config of the sweep").resolve()


def _axis_values(here: Path, axis: str, values: list[Any] | dict[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """An axis as (label, settings) pairs: settings are config-key overrides, plus ``config`` for a file."""
    if isinstance(values, list):  # values of the config key the axis names
        return [(_label(value), {axis: value}) for value in values]
    named = []
    for label, value in values.items():
        if isinstance(value, str) and value.endswith(CONFIG_SUFFIXES):
            named.append((label, {"config": _config_file(here, value, f"{axis}: {label}")}))
        elif isinstance(value, dict) and "." not in axis and all(isinstance(k, str) for k in value):
            settings = dict(value)
            if "config" in settings:
                settings["config"] = _config_file(here, settings["config"], f"{axis}: {label}")
            named.append((label, settings))
        else:  # a named value of the config key the axis names
            named.append((label, {axis: value}))
    return named


def _override(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix('...').strip()}"


def _label(value: Any) -> Any:
    """A value as its point's label: numbers stay numbers (a report plots them), lists join with "+"."""
    if isinstance(value, list):
        return "+".join(map(str, value))
    return value if isinstance(value, int | float) else str(value)


def _safe(label: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", str(label))


def _short_names(axes: list[str]) -> dict[str, str]:
    last = [axis.rsplit(".", 1)[-1] for axis in axes]
    return {axis: tail if last.count(tail) == 1 else axis for axis, tail in zip(axes, last, strict=True)}
