"""Offline metrics, ablations, statistics and reports; reads checkpoints and results files."""
