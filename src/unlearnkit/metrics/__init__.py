"""Metrics: memorisation (MA, EL_n; paper Appendix B), forgetting thresholds, and privacy audits."""

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
    audit,
    extraction_attack,
    format_audit_table,
    membership_inference,
    mia_scores,
)
from unlearnkit.metrics.thresholds import Thresholds, thresholds_from_holdout

__all__ = [
    "Thresholds",
    "audit",
    "auc",
    "extraction_attack",
    "extraction_likelihood",
    "extraction_likelihood_details",
    "extraction_likelihood_reference",
    "format_audit_table",
    "membership_inference",
    "memorization_accuracy",
    "mia_scores",
    "ngrams",
    "overlap_n",
    "thresholds_from_holdout",
]
