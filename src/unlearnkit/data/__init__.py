"""Data: files in a data directory (catalogue, download, checksums) and sources cut into blocks."""

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
    SOURCES,
    SourceConfig,
    dataset_fingerprint,
    is_gpt2_tokenizer,
    load_blocks,
    load_gpt2_tokenizer,
    load_tdec,
    source_names,
)

__all__ = [
    "CATALOG", "ENV_VAR", "SOURCES", "TDEC_OFFICIAL_MD5", "CatalogEntry", "SourceConfig", "TokenBlocks",
    "dataset_fingerprint", "ensure_file", "is_gpt2_tokenizer", "load_blocks", "load_gpt2_tokenizer",
    "load_tdec", "resolve_data_dir", "source_names", "verify_file",
]
