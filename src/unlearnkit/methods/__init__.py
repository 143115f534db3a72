"""Unlearning methods, one module each: ``ga``, ``gd``, ``ihl`` (the paper's), ``npo``, ``simnpo``, ``rmu``,
``level`` (forget rows to the held-out level); ``method.sam_rho`` makes any of them sharpness-aware,
``method.meta_relearn`` takes their forget gradient after a simulated relearning step, and
``method.disruption_mask`` keeps it only where the retain gradient agrees in sign.

A module here is a method by its file name; a user's method is named ``module:Class`` or ``file.py:Class``
(:mod:`unlearnkit.config.plugins`, docs/extending.md). Each is a subclass of :class:`UnlearningMethod`; nothing
else in the package lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unlearnkit.methods.base import MethodOptions, MethodSetup, UnlearningMethod

if TYPE_CHECKING:
    from unlearnkit.config import MethodConfig

__all__ = ["MethodOptions", "MethodSetup", "UnlearningMethod", "build_method"]


def build_method(config: MethodConfig) -> UnlearningMethod:
    """The method a config's ``method`` section names, with its options (validated when the config was read)."""
    method: UnlearningMethod = config.method_class()(config.options(), retain_weight=config.retain_weight,
                                                      retain_kind=config.retain_kind)
    method.name = config.name
    method.sam_rho = config.sam_rho
    method.meta_relearn = config.meta_relearn
    method.disruption_mask = config.disruption_mask
    return method
