"""FLoRA: Fisher-weighted LoRA initialisation (paper Section 3.4, Eqs. 2-4): maths, PEFT initialisation, export."""

from .export import save_flora_adapter_for_original_base, save_flora_initial_adapter
from .init import FloraSummary, LayerStats, compute_fishers, fisher_retain_sample, initialise_flora, restore_flora
from .maths import flora_factors, relative_importance, row_weights, weighted_low_rank, weighted_objective

__all__ = [
    "FloraSummary", "LayerStats", "compute_fishers", "fisher_retain_sample", "flora_factors", "initialise_flora",
    "relative_importance", "restore_flora", "row_weights", "save_flora_adapter_for_original_base",
    "save_flora_initial_adapter", "weighted_low_rank", "weighted_objective",
]
