"""Demonstration generation: the scripted expert in LIBERO, one simulator per worker process,
written as a LeRobot v3 dataset with chain-of-causation annotations beside it.

Each demonstration starts from a fresh placement (`LiberoEnv.reset(placement_seed=...)`: the task's BDDL
regions sampled as LIBERO sampled its stored initial states), never from the benchmark's stored states,
which stay held out for evaluation; `meta/start_states.jsonl` records every start's simulator state. Each frame
also records the privileged object state as `observation.environment_state` (layout: data/env_state.py).

Resumable: every finished attempt is kept in `<out>.partial/` (one .npz per successful episode,
one JSON line per attempt), and the dataset at `<out>` is written only once all episodes exist.
An attempt the expert fails is logged with its reason and the next placement is tried. An attempt that
raises, runs past `job_timeout_s` (a hung simulator) or loses its worker is an error, not an expert
failure: it is logged as such, the run ends with an error naming it, and the same command retries it.
A later commit may resume the run: `<out>.partial/provenance.json` lists each commit that ran attempts
(`provenance.py`), and the dataset's meta/info.json records that list as its "provenance".
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..workers import JobLost, WorkerPool
from .record import CONTROL_STEPS_PER_FRAME, DATASET_FPS
from .render_profile import DEFAULT_GENERATED, INFO_KEY
from .render_profile import render_profile as _profile

IMAGE_KEYS = ("observation.images.image", "observation.images.wrist_image")

PROVENANCE_FILE = "provenance.json"  # in the staging folder: the commits that ran its attempts


ATTEMPTS_PER_EPISODE = 5  # placements tried per wanted demonstration before the task is given up


@dataclass(frozen=True)
class Job:
    suite: str
    task_id: int
    attempt: int
    image_size: int
    seed: int
    render_profile: str = DEFAULT_GENERATED

    @property
    def name(self) -> str:
        return f"task{self.task_id:02d}_attempt{self.attempt:04d}"

    @property
    def placement_seed(self) -> int:
        return placement_seed(self.seed, self.task_id, self.attempt)


class TooFewDemonstrations(RuntimeError):
    """The expert's attempts are spent and some task has fewer successes than asked (an expert failure, not an
    error: rerunning changes nothing)."""


def placement_seed(seed: int, task_id: int, attempt: int) -> int:
    """The RNG seed of one fresh placement, fixed by (generation seed, task, attempt) so runs reproduce."""
    return int(np.random.SeedSequence([seed, task_id, attempt, 0x57A27]).generate_state(1)[0])


def failure_reason(demonstration) -> str:
    """'expert failed in phase 1:place:carry (place akita_black_bowl_1 in ...; a plan of 2 steps)'."""
    from .expert.planner import Step
    from .expert.task import split_phase
    from .record import step_words

    phase = demonstration.phases[-1] if demonstration.phases else "none"
    steps = demonstration.scene.get("steps") or []
    index = split_phase(phase).index
    if index is None or not 0 <= index < len(steps):
        return f"expert failed in phase {phase}"
    step = Step(**{k: steps[index][k] for k in ("skill", "obj", "target", "relation")})
    return f"expert failed in phase {phase} ({step_words(step)}; a plan of {len(steps)} steps)"


_ENV = None  # one simulator per worker process, rebuilt only when the task changes


def _run_job(job: Job, staging: str) -> dict:
    global _ENV
    from ..data.starts import OVERLAP_TOLERANCE, nearest
    from .env import LiberoEnv
    from .record import record_demonstration

    base = {"task_id": job.task_id, "attempt": job.attempt, "placement_seed": job.placement_seed}
    try:
        have = None if _ENV is None else (_ENV.suite, _ENV.task_id, _ENV.image_size, _ENV.render_profile.name)
        if have != (job.suite, job.task_id, job.image_size, job.render_profile):
            if _ENV is not None:
                _ENV.close()
            _ENV = None
            _ENV = LiberoEnv(
                job.suite, job.task_id, image_size=job.image_size, seed=job.seed, render_profile=job.render_profile
            )
        demonstration = record_demonstration(_ENV, job.attempt, seed=job.seed, placement_seed=job.placement_seed)
        dist, _ = nearest(demonstration.start_state[None], _ENV.stored_init_states)
    except Exception as e:  # an error, not the expert's failure: the run ends naming it and a rerun retries it
        return {**base, "success": False, "error": f"{type(e).__name__}: {e}"}
    if dist[0] <= OVERLAP_TOLERANCE:  # astronomically unlikely; the stored states stay held out all the same
        return {**base, "success": False, "reason": f"placement within {dist[0]:.2g} of a benchmark initial state"}
    record = {
        **base,
        "success": demonstration.success,
        "steps": demonstration.steps,
        "frames": len(demonstration.actions),
        "task": demonstration.task,
        "reason": None if demonstration.success else failure_reason(demonstration),
    }
    if demonstration.success:
        arrays = demonstration.arrays()
        path = Path(staging) / f"{job.name}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            **{k.replace(".", "__"): v for k, v in arrays.items()},
            start_state=demonstration.start_state,
            phases=np.array(demonstration.phases),
            scene=np.array(json.dumps(demonstration.scene)),
            task=np.array(demonstration.task),
            env_state_names=np.array(demonstration.env_state_names, dtype=str),
        )
        os.replace(tmp, path)
    return record


def _read_attempts(path: Path) -> list[dict]:
    """The attempts log; a line torn by a kill is dropped (that attempt reruns), any other bad line is an error."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ValueError(
                f"{path} line {i + 1} is not JSON; expected one attempt record per line. "
                f"Delete {path.parent} to start the generation over."
            ) from None
    if out and "attempt" not in out[0]:
        raise ValueError(
            f"{path} is a log of an older generation that started from the benchmark's stored initial "
            f"states; delete {path.parent} to generate from fresh placements."
        )
    return out


def generate(
    suite: str,
    tasks: Sequence[int],
    episodes_per_task: int,
    out: str | Path,
    image_size: int = 128,
    workers: int = 2,
    seed: int = 0,
    progress: bool = True,
    job_timeout_s: float | None = 900,
    allow_short: bool = False,
    render_profile: str = DEFAULT_GENERATED,
) -> Path:
    """A LeRobot dataset of `episodes_per_task` expert demonstrations per task, each from a fresh placement.
    A task the expert solves fewer times raises TooFewDemonstrations once its attempts are spent, unless
    `allow_short`: then the dataset holds what the expert achieved (tasks it never solved left out)."""
    from tqdm.auto import tqdm

    out = Path(out)
    if (out / "meta" / "info.json").exists():
        print(f"[generate] {out} already holds a dataset; nothing to do (delete it to regenerate).")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"--out {out} is {'a file' if not out.is_dir() else 'a non-empty folder without a dataset'}; "
            "expected a new or empty folder."
        )
    _profile(render_profile)
    if episodes_per_task < 1 or workers < 1:
        raise ValueError(f"episodes_per_task and workers must be >= 1, got {episodes_per_task} and {workers}.")
    staging = Path(str(out) + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    settings = {
        "suite": suite,
        "tasks": list(tasks),
        "image_size": image_size,
        "seed": seed,
        "starts": "fresh placements",
        INFO_KEY: render_profile,
    }
    settings_path = staging / "settings.json"
    if settings_path.exists():
        try:
            old = json.loads(settings_path.read_text())
        except json.JSONDecodeError:
            raise ValueError(
                f"{settings_path} is not valid JSON; expected the settings of the interrupted generation "
                f"in {staging}. Delete {staging} to start the generation over."
            ) from None
        if isinstance(old, dict) and INFO_KEY not in old:
            old = {**old, INFO_KEY: "libero"}  # staged before profiles: rendered with LIBERO's settings
        if old != settings:
            raise ValueError(
                f"{staging} holds an interrupted run with other settings {json.dumps(old)}; "
                f"expected {settings}. Delete {staging} or use another --out."
            )
    settings_path.write_text(json.dumps(settings) + "\n")
    log_path = staging / "attempts.jsonl"
    _record_provenance(staging, log_path)
    done = [r for r in _read_attempts(log_path) if not r.get("error")]  # errored attempts are retried
    tried = {(r["task_id"], r["attempt"]) for r in done}
    wins = {
        t: [
            r["attempt"]
            for r in done
            if r["task_id"] == t
            and r["success"]
            and (staging / f"{Job(suite, t, r['attempt'], image_size, seed).name}.npz").exists()
        ]
        for t in tasks
    }
    max_attempts = ATTEMPTS_PER_EPISODE * episodes_per_task + 10
    queues = {t: [a for a in range(max_attempts) if (t, a) not in tried] for t in tasks}
    bar = tqdm(
        total=episodes_per_task * len(tasks),
        initial=sum(min(len(w), episodes_per_task) for w in wins.values()),
        desc=f"generate {suite}",
        unit="ep",
        disable=not progress,
    )
    failures = sum(1 for r in done if not r["success"])
    errors: list[str] = []
    with WorkerPool(workers, timeout_s=job_timeout_s) as pool, log_path.open("a") as log:

        def submit_more() -> None:
            # Errors stop new work (a broken setup would fail every attempt); finished attempts are kept.
            if errors:
                return
            for t in tasks:
                in_flight = sum(1 for j in pool.keys() if j.task_id == t)
                while pool.free > 0 and len(wins[t]) + in_flight < episodes_per_task and queues[t]:
                    job = Job(suite, t, queues[t].pop(0), image_size, seed, render_profile)
                    pool.submit(job, _run_job, job, str(staging))
                    in_flight += 1

        submit_more()
        while len(pool):
            job, rec = pool.next_finished()
            if isinstance(rec, JobLost):  # a hung or crashed simulator: an error, retried by the next run
                rec = {
                    "task_id": job.task_id,
                    "attempt": job.attempt,
                    "placement_seed": job.placement_seed,
                    "success": False,
                    "error": str(rec),
                }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if rec.get("error"):
                errors.append(f"task {job.task_id} attempt {job.attempt}: {rec['error']}")
            elif rec["success"]:
                wins[job.task_id].append(job.attempt)
                if len(wins[job.task_id]) <= episodes_per_task:
                    bar.update(1)
            else:
                failures += 1
            bar.set_postfix(failed=failures, errors=len(errors))
            submit_more()
    bar.close()
    if errors:
        from ..errors import RunFailed

        raise RunFailed(
            f"{len(errors)} generation attempt(s) raised an error (not an expert failure): "
            f"{'; '.join(errors[:3])}{' ...' if len(errors) > 3 else ''}. Finished attempts are kept in "
            f"{staging}; fix the cause and run the same command again to retry them."
        )
    short = {t: len(w) for t, w in wins.items() if len(w) < episodes_per_task}
    solved = [t for t in tasks if wins[t]]
    if short and allow_short and solved:
        return _write_dataset(out, staging, suite, solved, wins, episodes_per_task, image_size, seed, render_profile)
    if short:
        raise TooFewDemonstrations(
            f"the expert succeeded from fewer than {episodes_per_task} of {max_attempts} "
            f"fresh placements for tasks {short} (successes so far); finished episodes are kept "
            f"in {staging}."
        )
    return _write_dataset(out, staging, suite, tasks, wins, episodes_per_task, image_size, seed, render_profile)


def _record_provenance(staging: Path, log_path: Path) -> dict:
    """Add this code's commit and toolchain (toolchain.py) to the staged run's provenance.json (never to
    settings.json: another commit may resume the run). Attempts staged before provenance existed came from an
    unknown commit."""
    from ..provenance import UNKNOWN, continued_with_toolchain, provenance

    path = staging / PROVENANCE_FILE
    try:
        old = json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        old = None
    if not isinstance(old, dict) and _read_attempts(log_path):
        old = {"commit": UNKNOWN, "dirty": None}
    record = continued_with_toolchain(old, provenance())
    tmp = path.with_name(path.name + ".tmp")  # a kill mid-write keeps the list written before
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)
    return record


def _env_state_layout(staging: Path, names: list[str]) -> list[str] | None:
    """The dataset's environment-state names: the union of its episodes' layouts (data/env_state.py), or None
    when no episode recorded one (attempts staged by an older version, resumed)."""
    from ..data.env_state import merge_names

    layouts = []
    for name in names:
        with np.load(staging / f"{name}.npz", allow_pickle=False) as z:
            layouts.append([str(n) for n in z["env_state_names"]] if "env_state_names" in z.files else None)
    if all(lay is None for lay in layouts):
        return None
    if any(lay is None for lay in layouts):
        raise ValueError(
            f"{staging} holds episodes recorded with and without the environment state (an interrupted "
            f"run of an older version resumed); delete {staging} and generate again."
        )
    return merge_names(layouts)


def _write_dataset(out: Path, staging: Path, suite, tasks, wins, n, image_size, seed, profile: str) -> Path:
    from ..data.env_state import ENV_STATE_KEY, align
    from ..data.starts import START_STATES_FILE, start_record, start_states_text
    from ..data.writer import LeRobotWriter
    from .annotate import annotate, write_annotations

    extra = {
        "control_steps_per_frame": CONTROL_STEPS_PER_FRAME,
        # The camera settings every frame was rendered with; an evaluation of a policy trained on it uses them.
        INFO_KEY: profile,
        "render_settings": _profile(profile).record(),
        "provenance": json.loads((staging / PROVENANCE_FILE).read_text()),
        "source": {
            "generator": "world_modality.sim.generate",
            "suite": suite,
            "tasks": list(tasks),
            "seed": seed,
            "starts": "fresh placements (meta/start_states.jsonl)",
            "episodes": [],
        },
    }
    annotations, starts = [], []
    # The first n successes of each task in attempt order: the dataset does not depend on which worker finished first.
    chosen = {t: sorted(set(wins[t]))[:n] for t in tasks}
    layout = _env_state_layout(staging, [Job(suite, t, a, image_size, seed).name for t in tasks for a in chosen[t]])
    writer = LeRobotWriter(
        out,
        fps=DATASET_FPS,
        image_keys=IMAGE_KEYS,
        image_size=image_size,
        extra_info=extra,
        extra_features={ENV_STATE_KEY: layout} if layout else None,
    )
    with writer:
        for t in tasks:
            for attempt in chosen[t]:
                job = Job(suite, t, attempt, image_size, seed)
                z = np.load(staging / f"{job.name}.npz", allow_pickle=False)
                images = {k: z[k.replace(".", "__")] for k in IMAGE_KEYS}
                more = None
                if layout:
                    more = {
                        ENV_STATE_KEY: align(
                            z[ENV_STATE_KEY.replace(".", "__")],
                            [str(v) for v in z["env_state_names"]],
                            layout,
                            f"episode {job.name}",
                        )
                    }
                ep = writer.add_episode(images, z["observation__state"], z["action"], str(z["task"]), extra=more)
                extra["source"]["episodes"].append(
                    {"episode_index": ep, "task_id": t, "attempt": attempt, "placement_seed": job.placement_seed}
                )
                starts.append(start_record(ep, suite, t, z["start_state"], job.placement_seed))
                annotations.append((ep, annotate([str(p) for p in z["phases"]], json.loads(str(z["scene"])))))
        writer.add_file(START_STATES_FILE, start_states_text(starts))
        writer.finalize()
    write_annotations(out / "coc.jsonl", annotations)
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    return out
