"""Data: files in a data directory (catalogue, download, checksums), source loaders, and token blocks.

The names below are loaded on first use: the catalogue and the reading of user files need no torch, so a command
that only checks its input (a data directory, a file's content) refuses bad input before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "TokenBlocks": "blocks",
    "CATALOG": "catalog", "ENV_VAR": "catalog", "TDEC_OFFICIAL_MD5": "catalog", "CatalogEntry": "catalog",
    "ensure_file": "catalog", "resolve_data_dir": "catalog", "verify_file": "catalog",
    "LOADERS": "sources", "dataset_fingerprint": "sources", "is_gpt2_tokenizer": "sources", "load_blocks": "sources",
    "load_gpt2_tokenizer": "sources", "load_tdec": "sources",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'unlearnkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"unlearnkit.data.{_MODULE_OF[name]}"), name)
