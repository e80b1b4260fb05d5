"""Held-out starts: evaluation refuses a start state that produced training data.

The check compares simulator states, not indices: each evaluation start (a stored initial state of the
suite) against every start the training dataset records, by the max-abs difference of the flattened
state (time excluded). A dataset that records no starts (the public LIBERO data, whose demonstrations
were not recorded from the evaluation states; synthetic fixtures) cannot be checked, and says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..data.starts import OVERLAP_TOLERANCE, nearest, read_training_starts


class TrainOverlapError(ConfigError):
    """Evaluation would start from a state the training data was recorded from."""


def training_start_states(dataset: str | Path, recorded: dict | None = None) -> tuple[list, str]:
    """(states, how) of the starts a policy was trained from: `recorded` (what training copied from its
    dataset into the checkpoint), else what the dataset folder says; ([], reason) when neither has any."""
    from ..sim.suites import load_task

    root = Path(dataset)
    if recorded is not None:
        starts, where = recorded, "recorded in the checkpoint"
    elif (root / "meta" / "info.json").exists():
        starts, where = read_training_starts(root), f"read from {root}"
    else:
        return [], f"training dataset {root} not found and the checkpoint records no start states"
    if starts.get("kind") == "states":
        return [np.asarray(s["sim_state"], dtype=np.float64) for s in starts["states"]], f"start states {where}"
    if starts.get("kind") == "stored_indices":
        cache: dict = {}
        out = []
        for r in starts["refs"]:
            key = (r["suite"], r["task_id"])
            if key not in cache:
                cache[key] = np.asarray(load_task(*key)[1], dtype=np.float64)
            out.append(cache[key][r["init_state_index"]])
        return out, f"benchmark initial states named by index, {where}"
    return [], "the training dataset records no start states"


def check_overlap(
    dataset: str | Path,
    suite: str,
    episodes: dict[int, int | list[int]],
    allow: bool = False,
    tolerance: float = OVERLAP_TOLERANCE,
    recorded: dict | None = None,
) -> dict:
    """Compare the stored initial states of each task of `suite` that evaluation runs (`episodes[task]`: a list of
    state indices, or n for the first n) with the training starts. Returns the record kept in the evaluation's
    settings.json; raises TrainOverlapError on an overlap unless `allow`, in which case the overlapping (task,
    init) pairs are listed and flagged."""
    from ..sim.suites import load_task

    train, how = training_start_states(dataset, recorded)
    result = {
        "checked": bool(len(train)),
        "dataset": str(dataset),
        "how": how,
        "training_starts": len(train),
        "tolerance": tolerance,
        "min_distance": None,
        "overlapping": [],
        "allowed": bool(allow),
    }
    if not len(train):
        return result
    by_shape: dict[tuple, list] = {}
    for s in train:
        by_shape.setdefault(s.shape, []).append(s)
    dmin = np.inf
    for task, which in episodes.items():
        index = np.arange(which) if isinstance(which, int) else np.asarray(which, dtype=int)
        stored = np.asarray(load_task(suite, task)[1], dtype=np.float64)[index]
        refs = by_shape.get(stored.shape[1:], [])
        dist, _ = nearest(stored, np.stack(refs)) if refs else (np.full(len(stored), np.inf), None)
        dmin = min(dmin, float(dist.min()))
        result["overlapping"] += [[task, int(index[k])] for k in np.nonzero(dist <= tolerance)[0]]
    result["min_distance"] = None if not np.isfinite(dmin) else dmin
    if result["overlapping"] and not allow:
        pairs = ", ".join(f"task {t} init {k}" for t, k in result["overlapping"][:8])
        more = f" and {len(result['overlapping']) - 8} more" if len(result["overlapping"]) > 8 else ""
        raise TrainOverlapError(
            f"{len(result['overlapping'])} evaluation start(s) of {suite} are training starts of {dataset} "
            f"(within {tolerance:g} of a demonstration's start state): {pairs}{more}. Evaluation must start from "
            "held-out states: regenerate the data (`world-modality generate` samples fresh placements), or pass "
            "--allow_train_overlap to evaluate them anyway, flagged in every record and the report."
        )
    return result


def describe(overlap: dict) -> str:
    """One line for the console."""
    if not overlap.get("checked"):
        return f"held-out starts NOT checked: {overlap.get('how')}"
    d = overlap.get("min_distance")
    line = (
        f"held-out starts checked against {overlap['training_starts']} training starts ({overlap['how']}): "
        f"nearest {'n/a' if d is None else f'{d:.3g}'} (tolerance {overlap['tolerance']:g}), "
        f"{len(overlap['overlapping'])} overlapping"
    )
    if overlap["overlapping"]:
        line += " -- WARNING: those episodes start from training states and are flagged train_overlap"
    return line
