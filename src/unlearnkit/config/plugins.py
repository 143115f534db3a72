"""Plugins by name: the package's own (a module of ``unlearnkit.methods`` or ``unlearnkit.adapters``, found by its
file name) or a user's,
named ``my_package.my_module:MyClass`` or ``path/to/file.py:MyClass`` — so that a method of one's own runs
without a change to the package.

This is the one place where configuration reaches into a later stage, and it does so by name (``importlib``), not
by an import: a config must validate a method's own options where it is read, and the options live with the
method (an adapter's learning rate and needs likewise). Built-in plugin modules import torch only inside their
functions, so reading a config stays torch-free
(a user's plugin module may import what it likes).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError, unknown_name

#: the packages whose modules are plugins of each kind, the attribute each module names its plugin by, and the
#: modules of the package that are not plugins
PLUGIN_PACKAGES: dict[str, tuple[str | None, str, frozenset[str]]] = {
    "method": ("unlearnkit.methods", "METHOD", frozenset({"base"})),
    "adapter": ("unlearnkit.adapters", "ADAPTER", frozenset({"base", "fisher"})),
    "metric": (None, "METRIC", frozenset()),  # the built-in ones are the snapshot's own (evaluation.METRICS)
}


@functools.cache
def builtin_names(kind: str) -> list[str]:
    """The names of the package's own plugins of ``kind``: the modules of its package, found without importing
    them (listed once: a config asks for its method's class at every validation)."""
    package, _, not_plugins = PLUGIN_PACKAGES[kind]
    if package is None:
        return []
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return sorted(m.name for m in pkgutil.iter_modules(locations)
                  if not m.name.startswith("_") and m.name not in not_plugins)


def load_plugin(kind: str, reference: str) -> Any:
    """The class a plugin reference names: a built-in name, ``module.path:Class`` or ``file.py:Class`` (relative
    to the working directory). Raises :class:`UnlearnkitError` with one sentence when it names nothing."""
    package, attribute, _ = PLUGIN_PACKAGES[kind]
    if ":" not in reference:
        names = builtin_names(kind)
        if not names:
            raise UnlearnkitError(f'The {kind} "{reference}" names no class; name your own as module.path:Class or '
                                  "path/to/file.py:Class.")
        if reference not in names:
            error = unknown_name(kind, reference, names)
            raise UnlearnkitError(f"{str(error).rstrip('.')}; or name your own as module.path:Class or "
                                  "path/to/file.py:Class.")
        return getattr(importlib.import_module(f"{package}.{reference}"), attribute)
    location, _, name = reference.rpartition(":")
    if location.endswith(".py"):
        module = _module_from_file(kind, location)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise UnlearnkitError(f'The {kind} module "{location}" cannot be imported ({error}); install it or put '
                                  "it on PYTHONPATH, or name a file: path/to/file.py:Class.") from None
    found = getattr(module, name, None)
    if not isinstance(found, type):
        raise UnlearnkitError(f'{location} has no class "{name}"; name the {kind} class defined there '
                              f"({location}:ClassName).")
    return found


def _module_from_file(kind: str, location: str) -> Any:
    path = Path(location).expanduser().resolve()
    if not path.is_file():
        raise UnlearnkitError(f"The {kind} file {location} does not exist; give the path of a Python file, relative "
                              "to the directory you run from.")
    module_name = f"unlearnkit_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise UnlearnkitError(f"The {kind} file {location} failed to load: {type(error).__name__}: {error}; fix "
                              "the file.") from None
    return module
