"""Adapters, one module each: ``none`` (full fine-tuning), ``lora`` (through PEFT) and ``flora`` (the paper's
Fisher-weighted LoRA initialisation, Section 3.4); ``fisher`` computes the empirical Fisher FLoRA starts from.

A module here is an adapter by its file name; a user's adapter is named ``module:Class`` or ``file.py:Class``
(:mod:`unlearnkit.config.plugins`, docs/extending.md). Nothing here imports torch until an adapter is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unlearnkit.adapters.base import Adapter, AdapterInit

if TYPE_CHECKING:
    from unlearnkit.config import AdapterConfig

__all__ = ["Adapter", "AdapterInit", "build_adapter"]


def build_adapter(config: AdapterConfig) -> Adapter:
    """The adapter a config's ``adapter`` section names."""
    adapter: Adapter = config.adapter_class()(config)
    return adapter
