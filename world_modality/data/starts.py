"""Start states of a dataset's demonstrations, and the check that evaluation never starts from one of them.

Generated datasets record each demonstration's start (the flattened simulator state before the settle
steps) in `meta/start_states.jsonl`. Datasets from before that record which of the benchmark's stored
initial states each demonstration started from (`meta/info.json` -> source.episodes[].init_state_index);
those are references to resolve against the simulator. The public LIBERO data records neither.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

START_STATES_FILE = "meta/start_states.jsonl"
# Max-abs difference over the state (time excluded) under which two starts are the same start. Stored
# LIBERO starts of one task differ by >= 0.017 (m or rad), fresh placements by ~0.01 from each other.
OVERLAP_TOLERANCE = 1e-3


def state_hash(state: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(state, dtype=np.float64).tobytes()).hexdigest()[:16]


def start_record(episode_index: int, suite: str, task_id: int, state: np.ndarray, placement_seed: int) -> dict:
    state = np.asarray(state, dtype=np.float64)
    return {
        "episode_index": int(episode_index),
        "suite": suite,
        "task_id": int(task_id),
        "placement_seed": int(placement_seed),
        "sha256": state_hash(state),
        "sim_state": state.tolist(),
    }


def start_states_text(records: list[dict]) -> str:
    """The contents of `meta/start_states.jsonl`: one JSON record per demonstration."""
    return "".join(json.dumps(r) + "\n" for r in records)


def read_training_starts(root: str | Path) -> dict:
    """What a dataset says of its demonstrations' starts:
    {"kind": "states", "states": [{suite, task_id, episode_index, sim_state}, ...]}, or
    {"kind": "stored_indices", "refs": [{suite, task_id, init_state_index, episode_index}, ...]}, or
    {"kind": "none"} when it records nothing (the public LIBERO data, synthetic fixtures)."""
    root = Path(root)
    path = root / START_STATES_FILE
    if path.exists():
        states = []
        for i, line in enumerate(path.read_text().splitlines()):
            try:
                r = json.loads(line)
                states.append({k: r[k] for k in ("suite", "task_id", "episode_index", "sim_state")})
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path} line {i + 1} is not a start-state record ({e}); expected JSON with "
                    "suite, task_id, episode_index and sim_state."
                ) from None
        return {"kind": "states", "states": states}
    info_path = root / "meta" / "info.json"
    try:
        source = json.loads(info_path.read_text()).get("source") or {}
    except (OSError, json.JSONDecodeError):
        return {"kind": "none"}
    eps = source.get("episodes") or []
    refs = [
        {
            "suite": source.get("suite"),
            "task_id": e["task_id"],
            "init_state_index": e["init_state_index"],
            "episode_index": e.get("episode_index"),
        }
        for e in eps
        if "init_state_index" in e and "task_id" in e
    ]
    return {"kind": "stored_indices", "refs": refs} if refs else {"kind": "none"}


def nearest(starts: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each start (n, d): the max-abs distance to its nearest reference (m, d), time (column 0)
    excluded, and that reference's index. Shapes that differ (another scene) are infinitely far."""
    starts = np.asarray(starts, dtype=np.float64)
    refs = np.asarray(references, dtype=np.float64)
    if len(refs) == 0 or starts.ndim != 2 or refs.ndim != 2 or refs.shape[1] != starts.shape[1]:
        return np.full(len(starts), np.inf), np.full(len(starts), -1)
    d = np.abs(starts[:, None, 1:] - refs[None, :, 1:]).max(axis=2)
    idx = d.argmin(axis=1)
    return d[np.arange(len(starts)), idx], idx
