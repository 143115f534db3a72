"""Gradient difference: gradient ascent on the forget set plus the LM loss on the retain set (the paper's GD
baseline)."""

from __future__ import annotations

from unlearnkit.methods.ga import GradientAscent


class GradientDifference(GradientAscent):
    description = "gradient difference: GA on forget + LM loss on retain"
    uses_retain = True


METHOD = GradientDifference
