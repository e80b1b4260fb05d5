"""Demonstration generation: the scripted expert in LIBERO, one simulator per worker process,
written as a LeRobot v3 dataset with chain-of-causation annotations beside it.

Resumable: every finished attempt is kept in `<out>.partial/` (one .npz per successful episode,
one JSON line per attempt), and the dataset at `<out>` is written only once all episodes exist.
An attempt that runs past `job_timeout_s` (a hung simulator) or whose worker dies is retried once, then
logged as failed with its reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..workers import JobLost, WorkerPool
from .record import CONTROL_STEPS_PER_FRAME, DATASET_FPS

IMAGE_KEYS = ("observation.images.image", "observation.images.wrist_image")


@dataclass(frozen=True)
class Job:
    suite: str
    task_id: int
    init_index: int
    image_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"task{self.task_id:02d}_init{self.init_index:02d}"


_ENV = None  # one simulator per worker process, rebuilt only when the task changes


def _run_job(job: Job, staging: str) -> dict:
    global _ENV
    from .env import LiberoEnv
    from .record import record_demo

    try:
        if _ENV is None or (_ENV.suite, _ENV.task_id, _ENV.image_size) != (job.suite, job.task_id, job.image_size):
            if _ENV is not None:
                _ENV.close()
            _ENV = LiberoEnv(job.suite, job.task_id, image_size=job.image_size, seed=job.seed)
        demo = record_demo(_ENV, job.init_index, seed=job.seed)
    except Exception as e:  # a failed attempt is recorded with its reason, the run goes on
        return {"task_id": job.task_id, "init_index": job.init_index, "success": False, "reason": f"{type(e).__name__}: {e}"}
    record = {"task_id": job.task_id, "init_index": job.init_index, "success": demo.success, "steps": demo.steps,
              "frames": len(demo.actions), "task": demo.task, "reason": None if demo.success else f"expert failed in phase {demo.phases[-1]}"}
    if demo.success:
        arrays = demo.arrays()
        path = Path(staging) / f"{job.name}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k.replace(".", "__"): v for k, v in arrays.items()},
                 phases=np.array(demo.phases), scene=np.array(json.dumps(demo.scene)), task=np.array(demo.task))
        os.replace(tmp, path)
    return record


def init_order(n_init: int, seed: int, task_id: int) -> list[int]:
    """Initial states tried per task: a permutation fixed by (seed, task), so runs reproduce."""
    return np.random.default_rng([seed, task_id]).permutation(n_init).tolist()


def _num_init_states(suite: str, task_id: int) -> int:
    from .suites import load_task

    return len(load_task(suite, task_id)[1])


def generate(suite: str, tasks: Sequence[int], episodes_per_task: int, out: str | Path, image_size: int = 128,
             workers: int = 2, seed: int = 0, progress: bool = True, job_timeout_s: float | None = 900) -> Path:
    from tqdm.auto import tqdm

    out = Path(out)
    if (out / "meta" / "info.json").exists():
        print(f"[generate] {out} already holds a dataset; nothing to do (delete it to regenerate).")
        return out
    if episodes_per_task < 1 or workers < 1:
        raise ValueError(f"episodes_per_task and workers must be >= 1, got {episodes_per_task} and {workers}.")
    staging = Path(str(out) + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    settings = {"suite": suite, "tasks": list(tasks), "image_size": image_size, "seed": seed}
    settings_path = staging / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(f"{staging} holds an interrupted run with other settings {settings_path.read_text().strip()}; "
                         f"expected {settings}. Delete it or use another --out.")
    settings_path.write_text(json.dumps(settings) + "\n")
    log_path = staging / "attempts.jsonl"
    done = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    tried = {(r["task_id"], r["init_index"]) for r in done}
    wins = {t: [r["init_index"] for r in done if r["task_id"] == t and r["success"] and (staging / f"{Job(suite, t, r['init_index'], image_size, seed).name}.npz").exists()] for t in tasks}

    queues = {t: [i for i in init_order(_num_init_states(suite, t), seed, t) if (t, i) not in tried] for t in tasks}
    bar = tqdm(total=episodes_per_task * len(tasks), initial=sum(min(len(w), episodes_per_task) for w in wins.values()),
               desc=f"generate {suite}", unit="ep", disable=not progress)
    failures = sum(1 for r in done if not r["success"])
    with WorkerPool(workers, timeout_s=job_timeout_s) as pool, log_path.open("a") as log:

        def submit_more() -> None:
            for t in tasks:
                in_flight = sum(1 for j in pool.keys() if j.task_id == t)
                while pool.free > 0 and len(wins[t]) + in_flight < episodes_per_task and queues[t]:
                    job = Job(suite, t, queues[t].pop(0), image_size, seed)
                    pool.submit(job, _run_job, job, str(staging))
                    in_flight += 1

        submit_more()
        while len(pool):
            job, rec = pool.next_finished()
            if isinstance(rec, JobLost):  # a hung or crashed simulator: this initial state is skipped, the run goes on
                rec = {"task_id": job.task_id, "init_index": job.init_index, "success": False, "reason": str(rec)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if rec["success"]:
                wins[job.task_id].append(job.init_index)
                if len(wins[job.task_id]) <= episodes_per_task:
                    bar.update(1)
            else:
                failures += 1
            bar.set_postfix(failed=failures)
            submit_more()
    bar.close()
    short = {t: len(w) for t, w in wins.items() if len(w) < episodes_per_task}
    if short:
        raise RuntimeError(f"the expert ran out of initial states before {episodes_per_task} successes for tasks {short} "
                           f"(successes so far); finished episodes are kept in {staging}.")
    return _write_dataset(out, staging, suite, tasks, wins, episodes_per_task, image_size, seed)


def _write_dataset(out: Path, staging: Path, suite, tasks, wins, n, image_size, seed) -> Path:
    from ..data.writer import LeRobotWriter
    from .annotate import annotate, write_annotations

    order = {t: init_order(_num_init_states(suite, t), seed, t) for t in tasks}
    extra = {"control_steps_per_frame": CONTROL_STEPS_PER_FRAME, "source": {"generator": "world_modality.sim.generate", "suite": suite,
             "tasks": list(tasks), "seed": seed, "episodes": []}}
    annotations = []
    writer = LeRobotWriter(out, fps=DATASET_FPS, image_keys=IMAGE_KEYS, image_size=image_size, extra_info=extra)
    with writer:
        for t in tasks:
            # The first n successes in the fixed order: the dataset does not depend on which worker finished first.
            chosen = sorted(set(wins[t]), key=order[t].index)[:n]
            for init in chosen:
                z = np.load(staging / f"task{t:02d}_init{init:02d}.npz", allow_pickle=False)
                images = {k: z[k.replace(".", "__")] for k in IMAGE_KEYS}
                ep = writer.add_episode(images, z["observation__state"], z["action"], str(z["task"]))
                extra["source"]["episodes"].append({"episode_index": ep, "task_id": t, "init_state_index": init})
                annotations.append((ep, annotate([str(p) for p in z["phases"]], json.loads(str(z["scene"])))))
        writer.finalize()
    write_annotations(out / "coc.jsonl", annotations)
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    return out
