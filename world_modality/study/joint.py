"""`--joint`: one dataset holding every suite's demonstrations, so one policy per experiment and seed learns all of
them. Written from the per-suite datasets (their frames, start states and annotations, episodes renumbered);
built beside its folder and renamed into place, so a killed merge is redone whole by the next run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def joint_dataset(parts: dict[str, Path], out: Path, image_size: int) -> Path:
    """The joint dataset at `out` (kept when it exists): the episodes of `parts` ({suite: dataset}) in suite order."""
    from ..data.env_state import ENV_STATE_KEY, align, merge_names
    from ..data.lerobot import load_dataset
    from ..data.starts import START_STATES_FILE, start_states_text
    from ..data.writer import LeRobotWriter
    from ..sim.generate import IMAGE_KEYS
    from ..sim.record import CONTROL_STEPS_PER_FRAME, DATASET_FPS

    out = Path(out)
    if (out / "meta" / "info.json").exists():
        return out
    if out.exists():
        shutil.rmtree(out)  # a merge killed after the rename, before its last files: redone whole
    loaded = {suite: load_dataset(p, progress=False) for suite, p in parts.items()}
    layouts = {suite: ds.features.get(ENV_STATE_KEY, {}).get("names") for suite, ds in loaded.items()}
    layout = merge_names(v for v in layouts.values() if v) if all(layouts.values()) else None
    source = {"generator": "world_modality.study.joint", "suites": list(parts), "episodes": []}
    writer = LeRobotWriter(
        out,
        fps=DATASET_FPS,
        image_keys=IMAGE_KEYS,
        image_size=image_size,
        extra_info={"control_steps_per_frame": CONTROL_STEPS_PER_FRAME, "source": source},
        extra_features={ENV_STATE_KEY: layout} if layout else None,
    )
    starts, annotations = [], []  # annotations: the coc.jsonl lines, written inside the dataset's atomic rename
    with writer:
        for suite, ds in loaded.items():
            root = Path(parts[suite])
            images = {k: ds.images(k) for k in IMAGE_KEYS}
            state, action = ds.column("observation.state"), ds.column("action")
            env = ds.column(ENV_STATE_KEY) if layout else None
            info = json.loads((root / "meta" / "info.json").read_text())
            meta = {e["episode_index"]: e for e in info.get("source", {}).get("episodes", [])}
            start_of = {r["episode_index"]: r for r in _read_lines(root / START_STATES_FILE)}
            texts: dict[int, list[dict]] = {}
            for r in _read_lines(root / "coc.jsonl"):
                texts.setdefault(r["episode_index"], []).append(r)
            for ep in ds.episodes:
                rows = slice(ep.start, ep.end)
                more = (
                    {ENV_STATE_KEY: align(env[rows], layouts[suite], layout, f"{suite} episode {ep.index}")}
                    if layout
                    else None
                )
                new = writer.add_episode(
                    {k: v[rows] for k, v in images.items()}, state[rows], action[rows], ep.task, extra=more
                )
                source["episodes"].append(
                    {**meta.get(ep.index, {}), "suite": suite, "episode_index": new, "source_episode_index": ep.index}
                )
                if ep.index in start_of:
                    starts.append({**start_of[ep.index], "episode_index": new})
                annotations += [json.dumps({**r, "episode_index": new}) + "\n" for r in texts.get(ep.index, [])]
        writer.add_file(START_STATES_FILE, start_states_text(starts))
        writer.add_file("coc.jsonl", "".join(annotations))
        writer.finalize()
    return out
