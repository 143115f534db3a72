"""Reading a run config: YAML in, ``--set key=value`` overrides applied, errors as one sentence naming the fix."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from unlearnkit.config.catalogue import find_config, merge
from unlearnkit.config.run import RunConfig
from unlearnkit.errors import UnlearnkitError, did_you_mean


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently, so a
    repeated `lr:` would quietly replace the first)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f'the key "{key}" is given twice',
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """A YAML document as configs are read: safely, a key given twice in one mapping being an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=2e-4`` → (["train", "lr"], 0.0002); the value is read as YAML."""
    if "=" not in text:
        raise UnlearnkitError(f'The override "{text}" has no "="; write it as key=value, e.g. train.lr=2e-4.')
    key, raw = text.split("=", 1)
    if not key.strip():
        raise UnlearnkitError(f'The override "{text}" has no key; write it as key=value, e.g. train.lr=2e-4.')
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML reads "2e-4" as a string (no dot); numbers are what users mean.
    if isinstance(value, str) and any(c in value.lower() for c in ".e"):
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return raw


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """Valid keys under a config location, for did-you-mean suggestions."""
    model: Any = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _explain(error: ValidationError) -> UnlearnkitError:
    """Every problem pydantic found, one sentence (and line) each, so that one round of fixes suffices."""
    sentences = list(dict.fromkeys(_sentence(problem) for problem in error.errors()))
    return UnlearnkitError("\n".join(sentences))


def _sentence(first: Any) -> str:
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        where = ".".join(str(p) for p in loc[:-1]) or "the top level"
        return (f'The config key "{key}" does not exist; valid keys in {where}: {", ".join(valid)}.'
                f"{did_you_mean(str(loc[-1]), valid)}")
    message = first["msg"].removeprefix("Value error, ")
    if not key:
        return f"Invalid configuration: {message}.".replace("..", ".")
    if message.endswith((".", "?")):
        return f"Invalid value for {key}: {message}"
    return f"Invalid value for {key}: {message}; fix it in the config or with --set {key}=..."


def build_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise _explain(error) from None


def _where(error: Exception) -> str:
    """A YAML or decoding error in a few words on one line: what went wrong, and where."""
    if isinstance(error, UnicodeDecodeError):
        return f"byte {error.start} is not UTF-8"
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (a path, or a shipped config's name; or start from the defaults), resolve its ``base:``,
    apply ``key=value`` overrides, validate."""
    raw = read_config(find_config(path)) if path is not None else {}
    return build_config(apply_overrides(raw, overrides or []))


def read_config(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping with its ``base:`` resolved (a shipped config's name, or a path relative to the
    file), recursively: the mapping a run validates, and what a test compares."""
    if path.resolve() in _chain:
        cycle = " → ".join(str(p) for p in (*_chain, path.resolve()))
        raise UnlearnkitError(f"The configs' base: entries go round in a circle ({cycle}); break it.")
    try:
        loaded = read_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UnlearnkitError(f"The config file {path} is not valid UTF-8 YAML ({_where(error)}); fix its syntax.") \
            from None
    if loaded is None:
        raise UnlearnkitError(f"The config file {path} is empty; write at least the sections that differ from the "
                              "defaults, or base: NAME and what differs from it (`unlearnkit configs` lists them).")
    if not isinstance(loaded, dict):
        raise UnlearnkitError(f"The config file {path} must hold a mapping of sections; see `unlearnkit configs "
                              "show paper/gpt-neo-125m-flora-ihl`.")
    if "grid" in loaded:
        raise UnlearnkitError(f"{path} is a sweep file (it has a grid), not a run config; run it with `unlearnkit "
                              "sweep` instead.")
    reference = loaded.pop("base", None)
    if reference is None:
        return loaded
    if not isinstance(reference, str) or not reference.strip():
        raise UnlearnkitError(f"base: in {path} must name one config (a shipped name or a path relative to the "
                              "file); fix it.")
    base = read_config(find_config(reference, here=path.parent, what=f"base of {path}"),
                       (*_chain, path.resolve()))
    return merge(base, loaded)
