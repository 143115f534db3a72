"""unlearnkit: make a causal LM forget memorised text (IHL + FLoRA), prove it forgot, show what it kept."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
