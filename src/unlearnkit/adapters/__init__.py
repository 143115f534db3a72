"""Adapters: LoRA through PEFT and FLoRA, the Fisher-weighted LoRA initialisation (paper Section 3.4)."""

from .fisher import FisherResult, empirical_fisher, load_fisher, save_fisher
from .flora import (
    FloraSummary,
    compute_fishers,
    flora_factors,
    initialise_flora,
    relative_importance,
    row_weights,
    save_flora_adapter_for_original_base,
    save_flora_initial_adapter,
    weighted_low_rank,
)
from .lora import attach_lora, merged_model, save_lora_adapter

__all__ = [
    "FisherResult", "FloraSummary", "attach_lora", "compute_fishers", "empirical_fisher", "flora_factors",
    "initialise_flora", "load_fisher", "merged_model", "relative_importance", "row_weights", "save_fisher",
    "save_flora_adapter_for_original_base", "save_flora_initial_adapter", "save_lora_adapter",
    "weighted_low_rank",
]
