"""Metrics: memorisation (MA, EL_n), forgetting thresholds, and privacy audits."""

from unlearnkit.metrics.memorization import (
    extraction_likelihood,
    extraction_likelihood_reference,
    memorization_accuracy,
    ngrams,
    overlap_n,
)

__all__ = [
    "extraction_likelihood",
    "extraction_likelihood_reference",
    "memorization_accuracy",
    "ngrams",
    "overlap_n",
]
