"""`study --dataset`: train on a LeRobot LIBERO dataset (the public HuggingFaceVLA/libero, a local copy or a
hub-cache id already on disk) instead of generating demonstrations. The public data records a task by its
instruction (meta/tasks.parquet) and no suite, so each suite's tasks are found by the instruction LIBERO gives
them; each run trains on a view of those episodes: its own rows and episode table, the source's video files
linked, not re-encoded. Arms that read a column the data lacks are refused before anything runs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

VIEW_RECORD = "selected_from"  # meta/info.json key of a view: the source and what was taken from it


def resolve(text: str) -> Path:
    """The dataset's folder: a local LeRobot v3 dataset, else the snapshot of a hub-cache dataset id (only the
    disk is read)."""
    from ..config import ConfigError

    local = Path(text).expanduser()
    if (local / "meta" / "info.json").is_file():
        return local
    where = f"no {local / 'meta' / 'info.json'}"
    if not local.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import constants, try_to_load_from_cache

        found = try_to_load_from_cache(text, "meta/info.json", repo_type="dataset")
        if isinstance(found, str):
            return Path(found).parent.parent
        where += f", and no hub-cache copy of dataset {text} in {constants.HF_HUB_CACHE}"
    raise ConfigError(
        f"--dataset {text}: {where}; expected a LeRobot v3 dataset (meta/info.json, data/, videos/) on disk, e.g. a "
        "local copy of HuggingFaceVLA/libero (nothing is downloaded at run time)."
    )


def needed_keys(cfg) -> dict[str, str]:
    """{feature: what reads it} of one run config: the policy's state, actions and cameras, and its world stream's
    input (a camera, or the simulator's object state for E2-State)."""
    from ..data.env_state import ENV_STATE_KEY

    d, w = cfg.data, cfg.world
    keys = {d.state_key: "the policy's state", d.action_key: "the actions", "task_index": "each frame's task"}
    keys.update({k: "a camera of the policy" for k in d.image_keys})
    if not cfg.policy.disable_future_injection:
        if w.world_encoder == "env_state":
            keys[ENV_STATE_KEY] = "the world latent: the simulator's object state"
        else:
            keys[w.world_image_key] = "the world encoder's camera"
    return keys


def check_dataset(s, configs: dict) -> None:
    """Refuse, before anything runs, an arm that reads a key the dataset lacks (`configs`: {experiment: a run
    config}) and a task of the study the dataset holds no episode of."""
    from ..config import ConfigError

    root = resolve(s.dataset)
    info = json.loads((root / "meta" / "info.json").read_text())
    present = set(info.get("features") or {})
    for e, cfg in configs.items():
        missing = {k: why for k, why in needed_keys(cfg).items() if k not in present}
        if missing:
            said = "; ".join(f"{k} ({why})" for k, why in missing.items())
            raise ConfigError(
                f"--experiments {e} reads {said}, which --dataset {s.dataset} does not record (its features: "
                f"{', '.join(sorted(present))}); leave {e} out, or give a dataset that records "
                f"{'it' if len(missing) == 1 else 'them'} (`world-modality generate` writes every key the arms read)."
            )
    have = episodes_by_instruction(str(root))
    for suite in s.suites:
        for t, text in instructions(suite, s.tasks).items():
            if not have.get(text):
                shown = ", ".join(repr(x) for x in list(have)[:4]) + (", ..." if len(have) > 4 else "")
                raise ConfigError(
                    f"--dataset {s.dataset} holds no episode of {suite} task {t} ({text!r}): the data names a task by "
                    f"its instruction, and it holds {len(have)} task(s): {shown}; expected the public LIBERO data, or "
                    "--suites/--tasks it holds."
                )


def instructions(suite: str, tasks) -> dict[int, str]:
    """{task id: the instruction LIBERO gives it} (its BDDL file name's, which the public data stores)."""
    from ..sim.suites import suite_benchmark

    bench = suite_benchmark(suite)
    return {t: bench.get_task(t).language for t in (range(bench.n_tasks) if tasks is None else tasks)}


@lru_cache(maxsize=8)
def episodes_by_instruction(root: str) -> dict[str, list[int]]:
    """{instruction: its episode indices, sorted} from the data rows' task_index and meta/tasks."""
    from ..data.lerobot_tables import DatasetError, read_tables, read_tasks

    root_path = Path(root)
    tasks = read_tasks(root_path)
    if tasks is None:
        raise DatasetError(f"{root_path / 'meta' / 'tasks.parquet'} is missing; expected the task of each index.")
    rows = read_tables(sorted((root_path / "data").glob("**/*.parquet")), ["episode_index", "task_index"])
    pairs = set(zip(rows.column("episode_index").to_pylist(), rows.column("task_index").to_pylist()))
    out: dict[str, list[int]] = {}
    for ep, ti in sorted(pairs):
        out.setdefault(tasks.get(ti, ""), []).append(int(ep))
    return out


@lru_cache(maxsize=8)
def fingerprint(root: str) -> str:
    from ..data.fingerprint import dataset_fingerprint

    return dataset_fingerprint(Path(root), sorted((Path(root) / "data").glob("**/*.parquet")))


def view_path(s, name: str) -> Path:
    """Where the view of `name`'s tasks lives under --data: the tasks, the demonstrations per task and the source's
    fingerprint in its name, so studies that share --data share it and a changed source makes a new one."""
    root = resolve(s.dataset)
    tasks = "all" if s.tasks is None else "-".join(map(str, s.tasks))
    return Path(s.data) / f"{name}-t{tasks}-n{s.demos_per_task}-{root.name}-{fingerprint(str(root))}"


def select(s, name: str, tasks_of: dict[str, list[int]]) -> dict:
    """The data stage of `name` (a suite, or "joint" over every suite): its view, built once (shards that share
    --data wait on a lock beside it), and the stage's record: demonstrations per task of a single suite, where
    the data came from and whether evaluation can check that its starts are held out."""
    from ..cache_dirs import locked
    from ..data.starts import read_training_starts
    from .records import dataset_provenance

    root = resolve(s.dataset)
    have = episodes_by_instruction(str(root))
    chosen: dict[str, dict[int, list[int]]] = {}
    for suite, tasks in tasks_of.items():  # the first --demos-per-task episodes of each task, in episode order
        texts = instructions(suite, tasks)
        chosen[suite] = {t: have.get(texts[t], [])[: s.demos_per_task] for t in tasks}
    out = view_path(s, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"dataset": s.dataset, "fingerprint": fingerprint(str(root))}
    episodes = sorted(ep for per_task in chosen.values() for eps in per_task.values() for ep in eps)
    with locked(out.parent / f".{out.name}.lock"):
        if not (out / "meta" / "info.json").exists():
            write_view(root, out, episodes, record)
    starts = read_training_starts(out)
    result = {
        "dataset": str(out),
        "provenance": dataset_provenance(out),
        "training_data": {**record, "episodes": len(episodes), "held_out_starts": held_out_text(starts, s.dataset)},
    }
    if name in tasks_of:
        result["demos"] = {t: len(eps) for t, eps in chosen[name].items()}
    return result


def held_out_text(starts: dict, dataset: str) -> str:
    """Whether evaluation can check that its starts are not the training data's (evaluate/overlap.py does)."""
    if starts["kind"] == "states":
        return f"checked against the {len(starts['states'])} start states the data records"
    if starts["kind"] == "stored_indices":
        return f"checked against the {len(starts['refs'])} stored initial states the data names"
    return (
        f"not checked: {dataset} records no start state of its demonstrations (the public LIBERO data records none), "
        "so no evaluation start can be compared with them"
    )


def write_view(src: Path, out: Path, episodes: list[int], record: dict) -> Path:
    """A LeRobot v3 dataset at `out` of `episodes` of `src`: their data rows in one file and their episode table
    (re-indexed to it), the source's tasks, start states and annotations of those episodes, and links to the
    source's video files (the episodes' spans in them are unchanged). Built beside `out` and renamed into place,
    so a killed build leaves nothing that is reused."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ..data.lerobot_tables import read_tables

    info = json.loads((src / "meta" / "info.json").read_text())
    keep = pa.array(episodes, pa.int64())
    rows = read_tables(sorted((src / "data").glob("**/*.parquet")))
    rows = rows.filter(pc.is_in(rows.column("episode_index").cast(pa.int64()), value_set=keep))
    order = [("episode_index", "ascending")] + ([("frame_index", "ascending")] * ("frame_index" in rows.column_names))
    rows = rows.sort_by(order)
    if "index" in rows.column_names:
        rows = rows.set_column(rows.column_names.index("index"), "index", pa.array(range(rows.num_rows), pa.int64()))
    metas = read_tables(sorted((src / "meta" / "episodes").glob("**/*.parquet")))
    metas = metas.filter(pc.is_in(metas.column("episode_index").cast(pa.int64()), value_set=keep))
    metas = metas.sort_by("episode_index")
    counts = pc.value_counts(rows.column("episode_index").cast(pa.int64())).to_pylist()
    length = {c["values"]: c["counts"] for c in counts}
    ends, total = [], 0
    for ep in metas.column("episode_index").to_pylist():
        total += length[ep]
        ends.append(total)
    starts = [e - length[ep] for e, ep in zip(ends, metas.column("episode_index").to_pylist())]
    for col, values in (
        ("data/chunk_index", [0] * len(ends)),
        ("data/file_index", [0] * len(ends)),
        ("dataset_from_index", starts),
        ("dataset_to_index", ends),
        ("meta/episodes/chunk_index", [0] * len(ends)),
        ("meta/episodes/file_index", [0] * len(ends)),
    ):
        if col in metas.column_names:
            metas = metas.set_column(metas.column_names.index(col), col, pa.array(values, pa.int64()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        data_file = tmp / info["data_path"].format(chunk_index=0, file_index=0)
        data_file.parent.mkdir(parents=True)
        pq.write_table(rows, data_file)
        (tmp / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
        pq.write_table(metas, tmp / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
        _link_videos(src, tmp, info, metas.to_pylist())
        for name in ("tasks.parquet", "tasks.jsonl"):
            if (src / "meta" / name).is_file():
                shutil.copyfile(src / "meta" / name, tmp / "meta" / name)
        for rel in ("meta/start_states.jsonl", "coc.jsonl"):
            _copy_lines(src / rel, tmp / rel, set(episodes))
        source = info.get("source")
        if isinstance(source, dict) and isinstance(source.get("episodes"), list):
            info["source"] = {
                **source,
                "episodes": [e for e in source["episodes"] if e.get("episode_index") in set(episodes)],
            }
        info.update(total_episodes=len(episodes), total_frames=rows.num_rows, splits={"train": f"0:{len(episodes)}"})
        info[VIEW_RECORD] = {**record, "root": str(src), "episodes": len(episodes)}
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _link_videos(src: Path, tmp: Path, info: dict, metas: list[dict]) -> None:
    """A link to every source video file the episodes' spans lie in, at the path the episode table names."""
    keys = [k for k, f in (info.get("features") or {}).items() if f.get("dtype") == "video"]
    for m in metas:
        for key in keys:
            if f"videos/{key}/chunk_index" not in m:
                continue
            rel = info["video_path"].format(
                video_key=key,
                chunk_index=int(m[f"videos/{key}/chunk_index"]),
                file_index=int(m[f"videos/{key}/file_index"]),
            )
            link = tmp / rel
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.abspath(src / rel), link)


def _copy_lines(src: Path, dst: Path, episodes: set[int]) -> None:
    """The JSON lines of `src` (one record per episode or frame, with its episode_index) of `episodes`."""
    if not src.is_file():
        return
    lines = [
        ln for ln in src.read_text().splitlines() if ln.strip() and json.loads(ln).get("episode_index") in episodes
    ]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(ln + "\n" for ln in lines))


def render(training_data: dict[str, dict]) -> list[str]:
    """The report's training-data section of a study on --dataset ({training dataset: its stage's "training_data"}):
    the source, its fingerprint, the episodes each training dataset took and whether evaluation could check that
    its starts are held out."""
    if not training_data:
        return []
    first = next(iter(training_data.values()))
    lines = ["", "## Training data", "", f"`{first['dataset']}` (fingerprint {first['fingerprint']}), not generated: "]
    lines[-1] += "each suite's tasks taken by the instruction LIBERO gives them."
    lines += ["", "| Training dataset | Episodes | Held-out starts |", "|---|---|---|"]
    return lines + [f"| {name} | {r['episodes']} | {r['held_out_starts']} |" for name, r in training_data.items()]
