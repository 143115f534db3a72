"""Metrics: memorization (MA, EL_n; paper Appendix B), forgetting thresholds, perplexity and privacy attacks."""

from unlearnkit.metrics.memorization import (
    extraction_likelihood,
    extraction_likelihood_details,
    extraction_likelihood_reference,
    memorization_accuracy,
    ngrams,
    overlap_n,
)
from unlearnkit.metrics.privacy import (
    auc,
    extraction_attack,
    extraction_layout,
    membership_inference,
    mia_scores,
)
from unlearnkit.metrics.thresholds import Thresholds, thresholds_from_holdout

__all__ = [
    "Thresholds",
    "auc",
    "extraction_attack",
    "extraction_likelihood",
    "extraction_likelihood_details",
    "extraction_likelihood_reference",
    "extraction_layout",
    "membership_inference",
    "memorization_accuracy",
    "mia_scores",
    "ngrams",
    "overlap_n",
    "thresholds_from_holdout",
]
