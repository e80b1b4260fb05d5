"""The held-out split of a dataset's episodes, the same for every seed and experiment."""

from __future__ import annotations

import numpy as np

from .lerobot import LeRobotDataset

# The held-out split depends on this constant, not the training seed, so every seed and every
# experiment is judged on the same episodes.
SPLIT_SEED = 20260101


def split_episodes(dataset: LeRobotDataset, val_fraction: float) -> tuple[list[int], list[int]]:
    """Per task, hold out round(val_fraction * n) episodes (at least one where a task has two or more)."""
    rng = np.random.default_rng(SPLIT_SEED)
    by_task: dict[str, list[int]] = {}
    for ep in dataset.episodes:
        by_task.setdefault(ep.task, []).append(ep.index)
    train, val = [], []
    for task in sorted(by_task):
        ids = sorted(by_task[task])
        rng.shuffle(ids)
        n_val = max(1, round(val_fraction * len(ids))) if len(ids) >= 2 else 0
        val += ids[:n_val]
        train += ids[n_val:]
    if not train:
        raise ValueError(
            f"dataset {dataset.root} has too few episodes to train on after holding out {val_fraction:.0%}."
        )
    return sorted(train), sorted(val)
