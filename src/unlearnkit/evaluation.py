"""What "evaluate the model now" means, before and after unlearning, with results held by name.

Today: MA and EL_n (Appendix B) on the forget and held-out sets. Downstream evaluations
(reasoning, dialogue, perplexity, privacy audit) add entries to the same snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unlearnkit.config import EvalConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.metrics.memorization import (
    extraction_likelihood,
    extraction_likelihood_reference,
    memorization_accuracy,
)
from unlearnkit.progress import Progress


@dataclass
class EvalSets:
    forget: TokenBlocks
    validation: TokenBlocks | None = None
    retain: TokenBlocks | None = None  # what the model should keep: scored before and after only


def evaluate_memorisation(model: Any, blocks: TokenBlocks, config: EvalConfig, progress: Progress,
                          label: str = "") -> dict[str, Any]:
    """Mean and per-sequence MA (Eq. 8) and EL_n (Eq. 7) of ``blocks``."""
    with progress.status(f"{label}: MA and EL{config.el_n} on {len(blocks)} sequences", announce=False):
        ma = memorization_accuracy(model, blocks.input_ids, blocks.attention_mask, batch_size=config.batch_size)
        if config.el_method == "fast":
            el = extraction_likelihood(model, blocks.input_ids, n=config.el_n, attention_mask=blocks.attention_mask,
                                       batch_size=config.batch_size)
        else:
            el = extraction_likelihood_reference(model, blocks.input_ids, n=config.el_n,
                                                 attention_mask=blocks.attention_mask)
    return {
        "name": blocks.name, "sequences": len(blocks),
        "ma": float(ma.mean()), "el": float(el.mean()),
        "ma_per_sequence": [round(float(v), 6) for v in ma], "el_per_sequence": [round(float(v), 6) for v in el],
    }


def evaluation_snapshot(model: Any, sets: EvalSets, config: EvalConfig, progress: Progress,
                        label: str) -> dict[str, Any]:
    snapshot = {}
    for role in ("forget", "validation", "retain"):
        blocks = getattr(sets, role)
        if blocks is not None:
            snapshot[role] = evaluate_memorisation(model, blocks, config, progress, f"{label} · {role}")
    return snapshot
