"""Closed-loop evaluation of a checkpoint in LIBERO: the benchmark's initial states in order, one
simulator per worker process, one JSON line per episode, resumable and shardable.

A rerun with the same output folder skips every (suite, task, init state, memory, seed) already in
the episodes file; `--shard i/n` takes every n-th episode so machines can split a suite.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..workers import JobLost, WorkerPool


@dataclass(frozen=True)
class EvalSettings:
    checkpoint: str
    suite: str = "libero_spatial"
    tasks: tuple[int, ...] | None = None  # default: every task of the suite
    n_episodes: int = 10  # per task: initial states 0..n-1
    memory: str = "predicted"
    replan_every: int | None = None  # frames between replans; default chunk_size // 2
    workers: int = 2
    seed: int = 7  # env seed, as in the public LIBERO evaluation scripts
    video: int = 0  # rollouts per task saved as mp4
    shard: tuple[int, int] = (0, 1)
    out: str | None = None
    max_steps: int | None = None  # control steps per episode; default: the suite's public limit
    device: str = "auto"  # where each worker's policy runs: auto (CUDA when present), cpu, cuda, cuda:N
    episode_timeout_s: float | None = 1800  # a hung worker is killed and its episode retried once; None: no limit

    def __post_init__(self) -> None:
        # Checked before the checkpoint loads or the simulator starts, so a typo fails at once.
        from ..config import ConfigError
        from ..policy.device import resolve_device
        from ..sim.suites import base_suite
        from .runner import CLOSED_LOOP_MEMORY

        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"shard must be i/n with 0 <= i < n, got {i}/{n}.")
        if self.n_episodes < 1:
            raise ConfigError(f"n_episodes must be >= 1, got {self.n_episodes}.")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}.")
        if self.episode_timeout_s is not None and not self.episode_timeout_s > 0:
            raise ConfigError(f"episode_timeout_s must be positive seconds or None (no limit), got {self.episode_timeout_s}.")
        if self.memory not in CLOSED_LOOP_MEMORY:
            why = " (oracle is offline-only: the true future depends on actions not yet taken)" if self.memory == "oracle" else ""
            raise ConfigError(f"closed-loop memory mode must be one of {CLOSED_LOOP_MEMORY}, got {self.memory!r}{why}.")
        try:
            base_suite(self.suite)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        resolve_device(self.device)


def episode_key(rec: dict) -> tuple:
    return (rec["suite"], rec["task_id"], rec["init_index"], rec["memory"], rec["seed"])


def episodes_path(out: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return out / ("episodes.jsonl" if n == 1 else f"episodes.shard-{i}-of-{n}.jsonl")


def read_episodes(path: Path) -> list[dict]:
    """Every complete line; a line cut by a kill mid-write is ignored (its episode reruns)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# --- worker side ----------------------------------------------------------------------------------
_STATE: dict = {}


def _worker_init(settings: dict) -> None:
    import torch

    from ..policy.device import resolve_device
    from .runner import PolicyRunner

    if resolve_device(settings["device"]).type == "cpu":
        torch.set_num_threads(1)  # one core per simulator process; threads would only contend
    _STATE["runner"] = PolicyRunner(settings["checkpoint"], settings["memory"], seed=settings["seed"], device=settings["device"])
    _STATE["settings"] = settings


def _run_job(task_id: int, init_index: int, record_video: bool) -> dict:
    from ..sim.env import LiberoEnv
    from .rollout import run_episode

    st, runner = _STATE["settings"], _STATE["runner"]
    env = _STATE.get("env")
    try:
        if env is None or env.task_id != task_id:
            if env is not None:
                env.close()
            env = _STATE["env"] = LiberoEnv(st["suite"], task_id, image_size=runner.cfg.data.image_size, seed=st["seed"],
                                            max_steps=st["max_steps"], camera_sizes=runner.render_sizes)
        result = run_episode(env, runner, init_index, st["replan_every"], seed=st["seed"] * 100_003 + task_id * 1_000 + init_index,
                             record_video=record_video)
        task = env.task
    except Exception as e:  # the episode fails with its reason; the evaluation goes on
        _STATE.pop("env", None)
        result, task = {"success": False, "steps": 0, "frames": 0, "failure": f"exception: {type(e).__name__}: {e}", "seconds": 0.0}, None
    result.update(task_id=task_id, init_index=init_index, task=task)
    return result


# --- parent side ----------------------------------------------------------------------------------
def num_tasks(suite: str) -> int:
    from libero.libero import benchmark

    registry = benchmark.get_benchmark_dict()
    if suite not in registry:
        raise ValueError(f"unknown LIBERO suite {suite!r}; available: {', '.join(sorted(registry))}.")
    return registry[suite](task_order_index=0).n_tasks


def evaluate(settings: EvalSettings, progress: bool = True) -> Path:
    from tqdm.auto import tqdm

    from ..config import matching_preset
    from ..policy.checkpoint import read_checkpoint_config
    from ..sim.suites import load_task, step_limit
    from ..train import resolve_checkpoint

    ckpt = resolve_checkpoint(settings.checkpoint)
    cfg = read_checkpoint_config(ckpt)  # the workers load the policy; here only its settings are needed
    replan = settings.replan_every or max(1, cfg.policy.chunk_size // 2)
    if not 1 <= replan <= cfg.policy.chunk_size:
        raise ValueError(f"replan_every must be in [1, chunk_size={cfg.policy.chunk_size}], got {replan}.")
    i, n = settings.shard
    tasks = list(settings.tasks) if settings.tasks is not None else list(range(num_tasks(settings.suite)))
    n_init = {t: len(load_task(settings.suite, t)[1]) for t in tasks}
    for t in tasks:
        if settings.n_episodes > n_init[t]:
            raise ValueError(f"n_episodes {settings.n_episodes} exceeds the {n_init[t]} initial states of {settings.suite} task {t}.")
    out = Path(settings.out) if settings.out else ckpt.parent.parent / "eval" / f"{settings.suite}-{settings.memory}"
    out.mkdir(parents=True, exist_ok=True)
    path = episodes_path(out, settings.shard)
    experiment = matching_preset(cfg) or cfg.preset or "custom"
    base = {"suite": settings.suite, "memory": settings.memory, "seed": settings.seed}
    done = {episode_key(r) for r in read_episodes(path)}
    jobs = [(t, k) for t in tasks for k in range(settings.n_episodes)][i::n]
    todo = [(t, k) for t, k in jobs if episode_key({**base, "task_id": t, "init_index": k}) not in done]
    (out / "settings.json").write_text(json.dumps({**asdict(settings), "checkpoint": str(ckpt), "replan_every": replan,
                                                   "step_limit": settings.max_steps or step_limit(settings.suite), "experiment": experiment}, indent=2) + "\n")
    if progress:
        print(f"[eval] {experiment} {settings.suite} memory={settings.memory}: {len(jobs)} episodes in this shard, "
              f"{len(jobs) - len(todo)} already done, {len(todo)} to run on {settings.workers} worker(s) -> {path}")
    worker_settings = {"checkpoint": str(ckpt), "memory": settings.memory, "seed": settings.seed,
                       "suite": settings.suite, "replan_every": replan, "max_steps": settings.max_steps,
                       "device": settings.device}
    video_dir = out / "videos"
    videos_left = {t: settings.video for t in tasks}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"eval {experiment}", unit="ep", disable=not progress)
    wins = sum(1 for r in read_episodes(path) if r.get("success") and episode_key(r) in done)
    lost = []
    if todo:
        workers = max(1, min(settings.workers, len(todo)))
        with WorkerPool(workers, timeout_s=settings.episode_timeout_s, initializer=_worker_init,
                        initargs=(worker_settings,)) as pool, path.open("a") as f:
            queue = list(todo)

            def submit():
                while queue and pool.free > 0:
                    t, k = queue.pop(0)
                    rec_video = videos_left[t] > 0 and k < settings.video
                    pool.submit((t, k), _run_job, t, k, rec_video)

            submit()
            while len(pool):
                (t, k), rec = pool.next_finished()
                if isinstance(rec, JobLost):  # not the policy's failure: left out, so a rerun tries it again
                    lost.append(f"task {t} init {k} ({rec})")
                else:
                    frames = rec.pop("video_frames", None)
                    record = {**base, **rec, "experiment": experiment, "checkpoint": str(ckpt), "shard": f"{i}/{n}"}
                    if frames is not None:
                        record["video"] = str(write_rollout_video(video_dir, record, frames).relative_to(out))
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    wins += int(record["success"])
                    bar.update(1)
                    bar.set_postfix(success=f"{wins}/{bar.n}")
                submit()
    bar.close()
    if lost:
        raise RuntimeError(f"{len(lost)} episode(s) hung or lost their worker and were not recorded: {'; '.join(lost)}. "
                           f"The {bar.n} finished episodes are saved in {path}; run the same command again to retry "
                           "the rest (a larger --episode_timeout, or 0 for none, if they are merely slow).")
    return path


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
        d.text((3, 14), f"task {record['task_id']} init {record['init_index']} | {record['memory']} | {outcome}",
               fill=(120, 255, 120) if record["success"] else (255, 120, 120))
        drawn.append(np.asarray(canvas))
    arr = np.stack(drawn)
    arr = arr[:, : arr.shape[1] // 2 * 2, : arr.shape[2] // 2 * 2]
    video_dir.mkdir(parents=True, exist_ok=True)
    path = video_dir / f"task{record['task_id']:02d}_init{record['init_index']:02d}_{'ok' if record['success'] else 'fail'}.mp4"
    return encode_video(arr, path, fps=4)
