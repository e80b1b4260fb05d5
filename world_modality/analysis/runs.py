"""Loading training runs for the report: config, metrics, offline and probe results, and closed-loop episodes
(shards merged, duplicates and retried errors resolved, each eval folder's overlap check), and the frames and
outcome of an episode video. Reads files only; no model is run.

Only evaluations of one identity merge into a rate (identity.py): per suite and memory mode, the eval folders
whose settings.json "identity" differs from the headline one (the newest checkpoint step, then the most
episodes, then the longest step limit) are set apart, listed with their own counts and differing fields."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..evaluate.episodes import episode_key, is_error, outcome, resolve
from ..jsonl import read_jsonl
from .identity import one_identity


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); expected one JSON object.") from e


def load_episodes(run_dir: Path) -> dict:
    """All closed-loop episodes of a run (shards merged), each (suite, task_id, init_index, memory, seed) once, from
    evaluations of one identity per (suite, memory) (see the module docstring; the others are "set_apart").

    "episodes": the finished ones (success or failure), the first line written per key; "errors": the keys that
    only ever ended in an error (an exception, not the policy's), their last error each; "retried_errors": error
    lines whose key a rerun then finished (not counted anywhere else); "duplicates"/"conflicts": extra finished
    lines of a key, and those with another outcome; "evals": each merged eval folder's overlap check and identity
    (its settings.json). Each record carries its folder ("_source") and that folder's identity ("_identity").
    """
    recs: list[dict] = []
    bad = 0
    files = sorted((run_dir / "eval").glob("**/episodes*.jsonl"))
    settings = {d: _read_settings(d) for d in sorted({f.parent for f in files})}
    for f in files:
        lines, n_bad = read_jsonl(f)
        bad += n_bad
        for r in lines:
            r = {**r, "memory": r.get("memory") or "none", "_source": f.parent, "_identity": settings[f.parent][1]}
            missing = [k for k in ("suite", "task_id", "init_index", "success") if k not in r]
            if missing:
                raise ValueError(
                    f"an episode in {f} lacks {missing}; expected the closed-loop episode fields, got {sorted(r)}."
                )
            try:
                outcome(r)
            except ValueError as e:
                raise ValueError(f"an episode in {f}: {e}") from None
            recs.append(r)
    recs, apart = one_identity(recs)
    apart_only = {a["dir"] for a in apart} - {r["_source"] for r in recs}
    files = [f for f in files if f.parent not in apart_only]
    finished, errors = resolve(recs)  # the first finished line per key; a resumed evaluator may rewrite it
    first = {episode_key(r): r for r in finished}
    repeats = [r for r in recs if not is_error(r) and first[episode_key(r)] is not r]
    conflicts = sum(outcome(r) != outcome(first[episode_key(r)]) for r in repeats)
    retried = sum(1 for r in recs if is_error(r) and episode_key(r) in first)
    folders = sorted({f.parent for f in files})
    evals = [_eval_folder(d, settings[d], [r for r in finished if r["_source"] == d]) for d in folders]
    return {
        "episodes": finished,
        "errors": errors,
        "retried_errors": retried,
        "files": files,
        "duplicates": len(repeats),
        "conflicts": conflicts,
        "bad_lines": bad,
        "evals": evals,
        "set_apart": apart,
    }


def _read_settings(folder: Path) -> tuple[dict, dict | None, str | None]:
    """(settings.json, its identity or None, a note on why either is missing)."""
    path = folder / "settings.json"
    if not path.exists():
        return {}, None, "no settings.json"
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}, None, "settings.json unreadable"
    if not isinstance(data, dict):
        return {}, None, "settings.json unreadable"
    identity = data.get("identity")
    return data, identity if isinstance(identity, dict) else None, None


def _eval_folder(folder: Path, settings: tuple, episodes: list[dict]) -> dict:
    """One eval folder's overlap check from its settings.json (None when the evaluation predates the check), its
    identity, and the episodes it evaluated despite an overlap with the training starts (train_overlap)."""
    data, identity, note = settings
    overlap = data.get("overlap")
    if not isinstance(overlap, dict):
        overlap, note = None, note or "settings.json has no overlap record: evaluated before the check existed"
    flagged = sorted(
        ((e["suite"], e["task_id"], e["init_index"], e["memory"]) for e in episodes if e.get("train_overlap")), key=repr
    )
    return {"dir": folder, "overlap": overlap, "note": note, "train_overlap": flagged, "identity": identity}


def load_run(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; expected a training run folder with config.json."
        )
    cfg = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    metrics = read_jsonl(run_dir / "metrics.jsonl")[0]
    offline_path = run_dir / "eval_offline_val.json"
    probe_path = run_dir / "probe.json"  # `world-modality probe --checkpoint RUN`
    return {
        "dir": run_dir,
        "name": cfg.get("preset") or run_dir.name,
        "preset": cfg.get("preset") or run_dir.name,
        "config": cfg,
        "metrics": metrics,
        "probe": read_json(probe_path) if probe_path.exists() else None,
        "offline": read_json(offline_path) if offline_path.exists() else None,
        **load_episodes(run_dir),
        "videos": sorted((run_dir / "eval").glob("*/videos/*.mp4")),
        "strips": sorted((run_dir / "eval").glob("*/videos/*.png")),
    }


def headline_mode(run: dict) -> str | None:
    """The memory mode the policy runs with when deployed: the config's, else predicted, else none."""
    modes = Counter(e["memory"] for e in run["episodes"] + run["errors"])
    if not modes:
        return None
    configured = run["config"].get("policy", {}).get("memory_mode")
    for m in (configured, "predicted", "none"):
        if m in modes:
            return m
    return modes.most_common(1)[0][0]


def video_frames(path: Path, n: int = 6) -> tuple[list[np.ndarray], list[str]]:
    import av

    with av.open(str(path)) as container:
        decoded = [(f.to_ndarray(format="rgb24"), f.time) for f in container.decode(video=0)]
    if not decoded:
        raise ValueError(f"{path} has no video frames.")
    idx = np.unique(np.linspace(0, len(decoded) - 1, n).round().astype(int))
    labels = [
        f"frame {i + 1}/{len(decoded)}" + (f" · {decoded[i][1]:.1f} s" if decoded[i][1] is not None else "")
        for i in idx
    ]
    return [decoded[i][0] for i in idx], labels


def video_outcome(path: Path, episodes: list[dict]) -> tuple[bool | None, dict | None]:
    """Success of the episode a video shows: a record's "video" field, else task/init numbers in the file name
    (episodes of the same eval folder first), else "ok"/"success"/"fail" in the name; None when nothing matches."""
    stem = path.stem.lower()
    task, init = re.search(r"task[_-]?(\d+)", stem), re.search(r"init(?:_index)?[_-]?(\d+)", stem)
    same = [e for e in episodes if e["_source"] == path.parent.parent]
    hits = [e for e in same + episodes if e.get("video") and Path(e["video"]).name == path.name]
    if not hits and task and init:
        hits = [
            e for e in same + episodes if e["task_id"] == int(task.group(1)) and e["init_index"] == int(init.group(1))
        ]
    if hits:
        return bool(hits[0]["success"]), hits[0]
    return (False if "fail" in stem else True if "succ" in stem or stem.endswith("_ok") else None), None
