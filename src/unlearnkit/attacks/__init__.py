"""Attacks that test whether a model really forgot: relearning, quantisation, probes."""

# the label of the rows measured on held-out text, the control (here so that reading attack records needs no torch)
HELD_OUT_ROWS = "held-out (control)"
