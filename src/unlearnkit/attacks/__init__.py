"""Attacks that test whether a model really forgot: relearning, quantisation, probes."""
