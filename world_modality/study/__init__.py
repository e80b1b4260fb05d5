"""`world-modality study`: the benchmark's table for a set of experiments, from demonstrations to paired statistics."""
