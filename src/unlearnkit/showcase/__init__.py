"""The showcase: the deletion-request demo and the CPU testbeds, and what only they use (records, leaks, memorising)."""
