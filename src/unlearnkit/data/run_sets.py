"""The token blocks one run needs (forget, retain, held-out validation), loaded as the config says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unlearnkit.config import RunConfig, SourceConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.sources import dataset_fingerprint, load_blocks
from unlearnkit.errors import UnlearnkitError


@dataclass
class RunData:
    """Token blocks by role; a role the run does not need is ``None``."""

    forget: TokenBlocks
    retain: TokenBlocks | None = None
    validation: TokenBlocks | None = None

    def fingerprints(self) -> dict[str, str]:
        sets = {"forget": self.forget, "retain": self.retain, "validation": self.validation}
        return {name: dataset_fingerprint(blocks) for name, blocks in sets.items() if blocks is not None}


def load_run_data(config: RunConfig, tokenizer: Any) -> RunData:
    """The sets ``config`` needs (:meth:`RunConfig.needs_retain`, :meth:`RunConfig.needs_validation`)."""
    data_dir = resolve_data_dir(config.data.dir)

    def load(spec: SourceConfig | None, role: str) -> TokenBlocks | None:
        if spec is None:
            return None
        blocks = load_blocks(spec, tokenizer, data_dir, seq_len=config.data.seq_len)
        if len(blocks) == 0:
            raise UnlearnkitError(f"The {role} set ({spec.source}) is empty; point data.{role} at a non-empty source.")
        return blocks

    forget = load(config.data.forget, "forget")
    assert forget is not None
    shortest = int(forget.attention_mask.sum(dim=1).min())
    if shortest < config.eval.el_n + 1:
        raise UnlearnkitError(
            f"A forget sequence has only {shortest} tokens, shorter than n+1 = {config.eval.el_n + 1} for "
            f"EL{config.eval.el_n}; use longer texts or a smaller eval.el_n."
        )
    retain = load(config.data.retain, "retain") if config.needs_retain() else None
    validation = load(config.data.validation, "validation") if config.needs_validation() else None
    return RunData(forget=forget, retain=retain, validation=validation)
