"""Attacks that test whether a model really forgot: relearning, quantisation, probes."""

from __future__ import annotations

# the label of the rows measured on held-out text, the control (here, with specific_recovery, so that reading attack
# records needs no torch)
HELD_OUT_ROWS = "held-out (control)"


def specific_recovery(original: float | None, unlearned: float | None, attacked: float | None,
                      control_unlearned: float | None, control_attacked: float | None) -> float | None:
    """What came back on the forget rows beyond what the same attack gave never-memorised text, as a share of what
    unlearning removed: ``((attacked − unlearned) − (control_attacked − control_unlearned)) / (original −
    unlearned)``. 0: the rows rose no more than held-out text (the attack taught the kind of text, not the rows);
    ``None`` when undefined."""
    if (original is None or unlearned is None or attacked is None or control_unlearned is None
            or control_attacked is None or abs(original - unlearned) < 1e-12):
        return None
    return ((attacked - unlearned) - (control_attacked - control_unlearned)) / (original - unlearned)


__all__ = ["HELD_OUT_ROWS", "specific_recovery"]
