"""Experiments: sweeps over configs and the paper-style report of their results."""
