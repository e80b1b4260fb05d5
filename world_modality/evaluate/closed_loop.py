"""Closed-loop evaluation of a checkpoint in LIBERO: the benchmark's initial states in order, one
simulator per worker process, one JSON line per episode, resumable and shardable.

Every start is first checked against the training data's starts (`overlap.py`). Each episode ends as a
success, a failure (the policy's: a timeout) or an error (an exception, a hung or lost worker: retried
once, then recorded as an error, never counted in a rate, and retried by the next run of the command).
A rerun into the same output folder skips the finished episodes of the same evaluation: the folder's
`settings.json` holds what changes an outcome (checkpoint and the hashes of its weights, its config.json
settings and its data info; suite, memory, seed, step limit, replanning interval, overlap permission), and a
rerun with other such settings is refused. `init_states` picks which stored states run (e.g. 10-49, the ones a
recipe was not tuned on); which ones ran is no part of the identity, each episode names its own.
`settings.json` also holds the code's provenance (`provenance.py`), outside the identity: a later commit
continues a folder, and each commit that ran episodes into it is listed once (its "continued_by"); each
episode line names the commit that ran it ("commit", '-dirty' when the code had uncommitted changes).
`--shard i/n` takes every n-th episode so machines can split a suite. With `policy_server` the workers ask a
`world-modality serve` of the same weights for their chunks (`inference/remote.py`) instead of loading the checkpoint.
With `arm` the policy is an external server's (`inference/external.py`), named and described by its spec: its name
and conventions are the identity, and its starts are checked against the training data declared (`train_starts`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..provenance import UNKNOWN, continued_with_toolchain, label, provenance
from ..workers import JobLost, WorkerPool
from .episodes import episode_key, is_error, resolve
from .eval_settings import EvalSettings
from .folder import check_same_evaluation, episodes_path, eval_identity, lock_folder, read_episodes
from .worker import run_job, worker_init


def resolve_memory(settings: EvalSettings, cfg) -> EvalSettings:
    """The settings with `memory` resolved: as given, else the mode the checkpoint trained with (`present` for
    E2-Present, `predicted` otherwise), so the output folder, settings.json and episodes name the mode that ran."""
    if settings.memory is not None:
        return settings
    return dataclasses.replace(settings, memory=cfg.policy.memory_mode)


def eval_folder(ckpt: Path, settings: EvalSettings) -> Path:
    """Where an evaluation writes: --out, else <run>/eval/<suite>-<memory> (memory resolved: resolve_memory)."""
    if settings.out:
        return Path(settings.out)
    if settings.memory is None:
        raise ValueError("eval_folder needs the memory mode resolved (resolve_memory) to name the folder.")
    return ckpt.parent.parent / "eval" / f"{settings.suite}-{settings.memory}"


@dataclass
class EvalRun:
    """What one evaluation asked for and got: the finished and errored episodes of exactly the requested
    (task, initial state) pairs of this shard, and the overlap check."""

    path: Path
    settings: dict
    finished: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    overlap: dict = field(default_factory=dict)


@dataclass
class Subject:
    """What an evaluation runs, a checkpoint of this project (loaded or served) or an external arm: its identity,
    its name in the records, what each worker builds its runner from, and its fields in settings.json and in every
    episode line. `check()` runs before anything is written and returns more fields for settings.json."""

    identity: dict
    experiment: str
    memory: str
    worker: dict
    written: dict
    record: dict
    check: Callable[[], dict] = dict
    console: tuple[str, ...] = ()


# --- parent side ----------------------------------------------------------------------------------
def evaluate(settings: EvalSettings, progress: bool = True) -> EvalRun:
    from ..config import ConfigError, matching_preset
    from ..policy.checkpoint import read_checkpoint_config
    from ..policy.checkpoint_store import resolve_checkpoint
    from ..sim.suites import step_limit
    from .overlap import check_overlap

    if settings.arm is not None:
        return _evaluate_arm(settings, progress)
    ckpt = resolve_checkpoint(settings.checkpoint)
    cfg = read_checkpoint_config(ckpt)  # the workers load the policy; here only its settings are needed
    settings = resolve_memory(settings, cfg)
    if cfg.policy.disable_future_injection and settings.memory != "predicted":  # before any worker starts
        raise ConfigError(
            f"memory mode {settings.memory!r} needs a policy with future injection; the checkpoint "
            f"{ckpt} has none (E0): leave --memory out."
        )
    settings = dataclasses.replace(settings, render_profile=policy_render_profile(ckpt, settings.render_profile))
    replan = settings.replan_every or max(1, cfg.policy.chunk_size // 2)
    if not 1 <= replan <= cfg.policy.chunk_size:
        raise ConfigError(f"replan_every must be in [1, chunk_size={cfg.policy.chunk_size}], got {replan}.")
    limit = settings.max_steps or step_limit(settings.suite)
    tasks, per_task = tasks_and_starts(settings)
    recorded = (json.loads((ckpt / "policy.json").read_text()).get("data_info") or {}).get("training_starts")
    overlap = check_overlap(
        cfg.data.dataset, settings.suite, per_task, allow=settings.allow_train_overlap, recorded=recorded
    )
    identity = eval_identity(ckpt, settings, replan, limit)

    def check() -> dict:
        if settings.policy_server:  # a server of other weights is refused
            from .server_check import check_server

            check_server(settings.policy_server, identity["weights_sha256"], settings.memory)
        return {}

    subject = Subject(
        identity=identity,
        experiment=matching_preset(cfg) or cfg.preset or "custom",
        memory=settings.memory,
        worker={
            "checkpoint": str(ckpt),
            "memory": settings.memory,
            "device": settings.device,
            "policy_server": settings.policy_server,
        },
        written={"checkpoint": str(ckpt)},
        record={"checkpoint": str(ckpt)},
        check=check,
    )
    return _in_folder(settings, subject, eval_folder(ckpt, settings), tasks, per_task, replan, limit, overlap, progress)


def tasks_and_starts(settings: EvalSettings) -> tuple[list[int], dict[int, list[int]]]:
    """The tasks evaluated and, per task, the stored initial states it runs from."""
    from ..config import ConfigError
    from ..sim.suites import load_task, num_tasks

    n_all = num_tasks(settings.suite)
    tasks = list(settings.tasks) if settings.tasks is not None else list(range(n_all))
    bad = [t for t in tasks if not 0 <= t < n_all]
    if bad:
        raise ConfigError(f"task ids {bad} are not tasks of {settings.suite}; expected ids in [0, {n_all - 1}].")
    n_init = {t: len(load_task(settings.suite, t)[1]) for t in tasks}
    return tasks, {t: starts_of(settings, n_init[t], t) for t in tasks}


def _evaluate_arm(settings: EvalSettings, progress: bool) -> EvalRun:
    """An external arm (`inference/external.py`): its spec gives the replanning interval, the render settings and
    every convention; its held-out starts are checked against the training data the user declares, if any."""
    from ..inference.arm import ArmSpec
    from ..sim.suites import step_limit
    from .folder import ARM_MEMORY, arm_identity

    spec = ArmSpec.from_dict(settings.arm)
    settings = dataclasses.replace(settings, render_profile=spec.render_profile)
    limit = settings.max_steps or step_limit(settings.suite)
    tasks, per_task = tasks_and_starts(settings)
    overlap = arm_overlap(spec.name, settings.train_starts, settings.suite, per_task, settings.allow_train_overlap)

    def check() -> dict:
        return {"arm_server": {"address": settings.arm_address, "metadata": check_arm_server(settings)}}

    subject = Subject(
        identity=arm_identity(spec.to_dict(), settings, limit),
        experiment=spec.name,
        memory=ARM_MEMORY,
        worker={"arm": spec.to_dict(), "arm_address": settings.arm_address, "arm_timeout_s": settings.arm_timeout_s},
        written={"memory": ARM_MEMORY},
        record={"checkpoint": None, "arm": spec.name},
        check=check,
        console=(f"[eval] {spec.describe()}; server {settings.arm_address}",),
    )
    out = (
        Path(settings.out)
        if settings.out
        else Path("runs") / "arms" / spec.name / "eval" / f"{settings.suite}-{ARM_MEMORY}"
    )
    return _in_folder(settings, subject, out, tasks, per_task, spec.replan_every, limit, overlap, progress)


def check_arm_server(settings: EvalSettings) -> dict:
    """The metadata an arm's server sends on connect; ConfigError when it cannot be reached or sends none, so an
    evaluation against no server never starts."""
    from ..config import ConfigError
    from ..inference.external import BadReply, OpenpiClient, ServerHung
    from ..inference.remote import ServerLost

    try:
        client = OpenpiClient(settings.arm_address, timeout_s=settings.arm_timeout_s, retries=2)
    except (ServerLost, ServerHung, BadReply) as err:
        raise ConfigError(f"--arm {settings.arm['name']}={settings.arm_address}: {err}") from None
    client.close()
    return client.metadata


def arm_overlap(name: str, train_starts: str | None, suite: str, per_task: dict, allow: bool) -> dict:
    """The held-out check of an arm's evaluation: against the starts of the training data declared (a dataset
    folder, or a start-states file in `meta/start_states.jsonl`'s format); without one, a record that says plainly
    that nothing was checked."""
    from ..config import ConfigError
    from ..data.starts import OVERLAP_TOLERANCE
    from .overlap import check_overlap

    if train_starts is None:
        return {
            "checked": False,
            "dataset": None,
            "how": f"no training data declared for arm {name} (--train_starts names its dataset folder or "
            "start-states file)",
            "training_starts": 0,
            "tolerance": OVERLAP_TOLERANCE,
            "min_distance": None,
            "overlapping": [],
            "allowed": bool(allow),
        }
    path = Path(train_starts)
    expected = (
        "expected a dataset folder (with meta/info.json) or a start-states file (JSON lines with suite, task_id and "
        "sim_state, as meta/start_states.jsonl)"
    )
    if path.is_dir():
        if not (path / "meta" / "info.json").is_file():
            raise ConfigError(f"--train_starts {path} is a folder without meta/info.json; {expected}.")
        return check_overlap(path, suite, per_task, allow=allow)
    if not path.is_file():
        raise ConfigError(f"--train_starts {path} does not exist; {expected}.")
    states = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            states.append(
                {"suite": r["suite"], "task_id": r["task_id"], "sim_state": [float(x) for x in r["sim_state"]]}
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"--train_starts {path} line {i + 1} is not a start-state record ({e}); {expected}."
            ) from None
    if not states:
        raise ConfigError(f"--train_starts {path} holds no start states; {expected}.")
    result = check_overlap(path, suite, per_task, allow=allow, recorded={"kind": "states", "states": states})
    result["how"] = f"start states read from {path}"  # not a checkpoint's record, which check_overlap assumes
    return result


def _in_folder(settings, subject, out, tasks, per_task, replan, limit, overlap, progress) -> EvalRun:
    from ..config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the episodes file.")
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(out)
    try:
        return _evaluate_locked(settings, subject, out, tasks, per_task, replan, limit, overlap, progress)
    finally:
        lock.close()


def policy_render_profile(ckpt: Path, asked: str | None) -> str:
    """The render profile of the policy's training frames (policy.json's data_info); another one asked for is
    refused, naming both."""
    from ..config import ConfigError
    from ..sim.render_profile import check_profile, recorded_profile

    info = json.loads((Path(ckpt) / "policy.json").read_text()).get("data_info") or {}
    try:
        return check_profile(asked, recorded_profile(info), f"{Path(ckpt) / 'policy.json'}: data_info.render_profile")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def starts_of(settings: EvalSettings, n_init: int, task: int) -> list[int]:
    """The stored initial states one task runs from: `init_states`, else the first `n_episodes`, else all."""
    from ..config import ConfigError

    if settings.init_states is not None:
        wanted = list(settings.init_states)
        if max(wanted) >= n_init:
            from ..ids import format_ids

            raise ConfigError(
                f"--init_states {format_ids(wanted)} names state {max(wanted)}, which {settings.suite} task {task} "
                f"does not store; expected states in [0, {n_init - 1}]."
            )
        return wanted
    n = settings.n_episodes or n_init
    if n > n_init:
        raise ConfigError(f"n_episodes {n} exceeds the {n_init} initial states of {settings.suite} task {task}.")
    return list(range(n))


def _evaluate_locked(settings, subject, out, tasks, per_task, replan, limit, overlap, progress) -> EvalRun:
    from tqdm.auto import tqdm

    from .overlap import describe

    i, n = settings.shard
    path = episodes_path(out, settings.shard)
    flagged = {tuple(p) for p in overlap["overlapping"]}
    check_same_evaluation(out, subject.identity, path)
    checked = subject.check()  # before anything is written
    experiment = subject.experiment
    base = {"suite": settings.suite, "memory": subject.memory, "seed": settings.seed}
    jobs = [(t, k) for t in tasks for k in per_task[t]][i::n]
    wanted = {episode_key({**base, "task_id": t, "init_index": k}) for t, k in jobs}
    finished, _ = resolve(read_episodes(path))
    done = {episode_key(r) for r in finished if episode_key(r) in wanted}
    todo = [(t, k) for t, k in jobs if episode_key({**base, "task_id": t, "init_index": k}) not in done]
    code = provenance()
    written = {
        **asdict(settings),
        **subject.written,
        **checked,
        "replan_every": replan,
        "step_limit": limit,
        "n_episodes": {t: len(ks) for t, ks in per_task.items()},
        "init_states": per_task,
        "experiment": experiment,
        "identity": subject.identity,
        "overlap": overlap,
        "provenance": folder_provenance(out, code, runs=bool(todo)),
    }
    (out / "settings.json").write_text(json.dumps(written, indent=2, default=str) + "\n")
    if progress:
        print(f"[eval] {describe(overlap)}")
        for line in subject.console:
            print(line)
        from ..ids import format_ids

        states = "; ".join(f"task {t}: {format_ids(ks)}" for t, ks in per_task.items())
        public = "the suite's public limit" if settings.max_steps is None else "not the public limit"
        print(f"[eval] stored initial states: {states}; step limit {limit} ({public})")
        print(
            f"[eval] {experiment} {settings.suite} memory={subject.memory}: {len(jobs)} episodes in this shard, "
            f"{len(jobs) - len(todo)} already done, {len(todo)} to run on {settings.workers} worker(s) -> {path}"
        )
    worker_settings = {
        **subject.worker,
        "seed": settings.seed,
        "suite": settings.suite,
        "replan_every": replan,
        "temporal_ensemble": settings.temporal_ensemble,
        "max_steps": settings.max_steps,
    }
    video_dir = out / "videos"
    bar = tqdm(
        total=len(jobs), initial=len(jobs) - len(todo), desc=f"eval {experiment}", unit="ep", disable=not progress
    )
    wins = sum(1 for r in finished if r.get("success") and episode_key(r) in done)
    n_errors = 0
    if todo:
        workers = max(1, min(settings.workers, len(todo)))
        with (
            WorkerPool(
                workers, timeout_s=settings.episode_timeout_s, initializer=worker_init, initargs=(worker_settings,)
            ) as pool,
            path.open("a") as f,
        ):
            queue = list(todo)
            filmed = video_jobs(jobs, settings.video)
            tries: dict[tuple, int] = {}

            def submit():
                while queue and pool.free > 0:
                    t, k = queue.pop(0)
                    tries[(t, k)] = tries.get((t, k), 0) + 1
                    pool.submit((t, k), run_job, t, k, (t, k) in filmed)

            submit()
            while len(pool):
                (t, k), rec = pool.next_finished()
                if isinstance(rec, JobLost):  # the pool already retried it: an error, never the policy's failure
                    rec = {
                        "outcome": "error",
                        "success": None,
                        "error": f"JobLost: {rec}",
                        "steps": None,
                        "frames": None,
                        "failure": None,
                        "seconds": None,
                        "task_id": t,
                        "init_index": k,
                        "task": None,
                    }
                elif is_error(rec) and tries[(t, k)] < 2:
                    queue.insert(0, (t, k))  # an exception is retried once in this run
                    submit()
                    continue
                frames = rec.pop("video_frames", None)
                record = {
                    **base,
                    **rec,
                    "experiment": experiment,
                    **subject.record,
                    "shard": f"{i}/{n}",
                    "step_limit": limit,
                    "replan_every": replan,
                    "train_overlap": (t, k) in flagged,
                    "commit": label(code),
                }
                if frames is not None:
                    record["video"] = str(write_rollout_video(video_dir, record, frames).relative_to(out))
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
                if is_error(record):
                    n_errors += 1
                else:
                    wins += int(record["success"])
                    bar.update(1)
                bar.set_postfix(success=f"{wins}/{bar.n}", errors=n_errors)
                submit()
    bar.close()
    finished, errors = resolve(read_episodes(path))
    return EvalRun(
        path=path,
        settings=written,
        overlap=overlap,
        finished=[r for r in finished if episode_key(r) in wanted],
        errors=[r for r in errors if episode_key(r) in wanted],
    )


def folder_provenance(out: Path, code: dict, runs: bool) -> dict:
    """The provenance settings.json records: the folder's so far, `code` and this process's toolchain (toolchain.py)
    added when this run has episodes to run (`runs`). Episodes written before folders recorded provenance are of an
    unknown commit, not of `code`. Called after check_same_evaluation, which refuses a settings.json that is not
    JSON."""
    settings_file = out / "settings.json"
    old = json.loads(settings_file.read_text()).get("provenance") if settings_file.exists() else None
    if old is None and any(read_episodes(p) for p in out.glob("episodes*.jsonl")):
        old = {"commit": UNKNOWN, "dirty": None}
    if not runs and old is not None:
        return old
    return continued_with_toolchain(old, code)


def video_jobs(jobs: list[tuple[int, int]], video: int) -> set[tuple[int, int]]:
    """The (task, initial state) jobs whose rollout is saved as an mp4: each task's first `video` initial states,
    so at most `video` per task however the episodes are sharded, resumed or retried."""
    return {(t, k) for t, k in jobs if k < video}


def write_rollout_video(video_dir: Path, record: dict, frames: list[np.ndarray]) -> Path:
    """Agent view and wrist side by side, with the instruction and the outcome written on it."""
    from PIL import Image, ImageDraw

    from ..data.video import encode_video

    outcome = "SUCCESS" if record["success"] else f"FAIL ({record['failure']})"
    drawn = []
    for img in frames:
        h, w = img.shape[:2]
        canvas = Image.new("RGB", (w, h + 28), (0, 0, 0))
        canvas.paste(Image.fromarray(img), (0, 28))
        d = ImageDraw.Draw(canvas)
        d.text((3, 1), (record.get("task") or "")[:70], fill=(255, 255, 255))
        d.text(
            (3, 14),
            f"task {record['task_id']} init {record['init_index']} | {record['memory']} | {outcome}",
            fill=(120, 255, 120) if record["success"] else (255, 120, 120),
        )
        drawn.append(np.asarray(canvas))
    arr = np.stack(drawn)
    arr = arr[:, : arr.shape[1] // 2 * 2, : arr.shape[2] // 2 * 2]
    video_dir.mkdir(parents=True, exist_ok=True)
    outcome = "ok" if record["success"] else "fail"
    path = video_dir / f"task{record['task_id']:02d}_init{record['init_index']:02d}_{outcome}.mp4"
    return encode_video(arr, path, fps=4)
