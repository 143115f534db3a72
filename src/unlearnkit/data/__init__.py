"""Data: files in a data directory (catalogue, download, checksums), source loaders, and token blocks."""

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import (
    CATALOG,
    ENV_VAR,
    TDEC_OFFICIAL_MD5,
    CatalogEntry,
    ensure_file,
    resolve_data_dir,
    verify_file,
)
from unlearnkit.data.sources import (
    LOADERS,
    dataset_fingerprint,
    is_gpt2_tokenizer,
    load_blocks,
    load_gpt2_tokenizer,
    load_tdec,
)

__all__ = [
    "CATALOG", "ENV_VAR", "LOADERS", "TDEC_OFFICIAL_MD5", "CatalogEntry", "TokenBlocks", "dataset_fingerprint",
    "ensure_file", "is_gpt2_tokenizer", "load_blocks", "load_gpt2_tokenizer", "load_tdec", "resolve_data_dir",
    "verify_file",
]
