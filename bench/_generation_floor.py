"""Demonstration generation against its physics floor (`eval_throughput.py --generation`): the project's own
`generate()` for a few demonstrations per task, each attempt timed in its worker (physics, rendering, expert) with
the control-step actions it applied, then every attempt's actions replayed from the same fresh placement with
physics only (no rendering, no expert) on as many worker processes (`_floor.replay_all`), and the project's
seconds per attempt as a multiple of that floor."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from _common import median
from _floor import RATIO_GOAL, agreement, check_agreement, check_render_settings, replay_all, split_lines

PARTS = ("physics", "rendering", "expert", "other")
DEFINITIONS = {
    "project": "one worker's seconds per attempt: generate()'s own job (simulator built when the task changes, "
    "the expert's episode rendering every dataset frame, the episode written to the staging folder) and its wait "
    "since its previous job (the parent's turn: attempts log, next job out); worker start-up excluded, robosuite's "
    "import included in each worker's first simulator build",
    "floor": "the same attempt's applied actions replayed from the same fresh placement (placement seed): reset "
    "(model reload, placement, settle steps) and control steps, no rendering, no expert, simulator already built",
    "physics": "reset and control steps inside the attempt, less the frames rendered inside them",
    "rendering": "camera frames (both cameras, every dataset frame)",
    "expert": "the scripted expert: its construction (plan) and each act()",
    "other": "project minus physics, rendering and expert: simulator construction, environment-state reads, the "
    "episode's .npz write, the parent's turn",
}
TIMING_DIR = "attempt_timing"  # beside the staging folder: one JSON per attempt, written by its worker

# --- worker side: generate()'s own `_run_job`, its simulator and expert timed ---------------------------------
_CLOCK: dict = {}
_STATE: dict = {}


def _reset_clock() -> None:
    """Zero this worker's clocks and action list for the next attempt."""
    _CLOCK.update(physics=0.0, rendering=0.0, expert=0.0, build=0.0, builds=0, frames=0, actions=[])


def _add(part: str, fn):
    """`fn` with its seconds added to _CLOCK[part], less the rendering done inside it (a reset that renders the
    first observation counts that frame as rendering, not physics)."""

    def timed(*args, **kwargs):
        r0, t0 = _CLOCK["rendering"], time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _CLOCK[part] += time.perf_counter() - t0 - (_CLOCK["rendering"] - r0)

    return timed


def _counted(part: str, count: str, fn):
    """`fn` with its seconds added to _CLOCK[part] and each call counted in _CLOCK[count]."""

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _CLOCK[part] += time.perf_counter() - t0
            _CLOCK[count] += 1

    return timed


def _install_timers() -> None:
    """Wrap LiberoEnv's reset/step/render/construction and TaskExpert's construction/act in this process, once."""
    from world_modality.sim.env import LiberoEnv
    from world_modality.sim.expert.task import TaskExpert

    if getattr(LiberoEnv, "_bench_timed", False):
        return
    render, step, build = LiberoEnv.render, _add("physics", LiberoEnv.step), LiberoEnv.__init__

    timed_render = _counted("rendering", "frames", render)

    def recorded_step(self, action, *args, **kwargs):
        # The action as applied (the dataset keeps a float32 copy, which would replay other physics).
        _CLOCK["actions"].append(np.asarray(action, dtype=np.float64).reshape(-1).tolist())
        return step(self, action, *args, **kwargs)

    timed_build = _counted("build", "builds", build)

    LiberoEnv.render, LiberoEnv.step, LiberoEnv.__init__ = timed_render, recorded_step, timed_build
    LiberoEnv.reset = _add("physics", LiberoEnv.reset)
    TaskExpert.__init__, TaskExpert.act = _add("expert", TaskExpert.__init__), _add("expert", TaskExpert.act)
    LiberoEnv._bench_timed = True


def timed_run_job(job, staging: str) -> dict:
    """generate()'s `_run_job`, unchanged in what it returns and stages; its timing, applied actions, final robot
    state and render settings go to TIMING_DIR beside the staging folder."""
    from world_modality.sim import generate as gen

    run = gen._run_job
    if run is timed_run_job:  # spawned workers import generate afresh; a forked one would inherit the patch
        raise RuntimeError("generate._run_job is this wrapper in the worker; expected generate's own (spawned workers)")
    _install_timers()
    _reset_clock()
    start = time.perf_counter()
    idle = start - _STATE["job_end"] if "job_end" in _STATE else None
    rec = run(job, staging)
    end = time.perf_counter()
    env = gen._ENV
    ok = env is not None and not rec.get("error")
    detail = {
        **rec,
        "placement_seed": job.placement_seed,
        "render_profile": job.render_profile,
        "render_settings": env.render_settings() if ok else None,
        "final_state": env.state().tolist() if ok else None,
        "actions": _CLOCK["actions"],
        "timing": {
            "job_s": end - start,
            "idle_s": idle,
            **{f"{p}_s": _CLOCK[p] for p in ("physics", "rendering", "expert", "build")},
            "simulator_builds": _CLOCK["builds"],
            "camera_frames": _CLOCK["frames"],
        },
    }
    folder = Path(staging).parent / TIMING_DIR
    folder.mkdir(exist_ok=True)
    (folder / f"{job.name}.json").write_text(json.dumps(detail))
    _STATE["job_end"] = time.perf_counter()  # this bench's own writing is in neither this attempt nor the next
    return rec


# --- parent side ---------------------------------------------------------------------------------------------
def run_generation(suite, tasks, per_task, workers, out: Path, profile: str, seed: int = 0):
    """generate() as a user runs it, `_run_job` timed in its workers; -> (attempts by task and attempt, wall s)."""
    from world_modality.sim import generate as gen

    own = gen._run_job
    gen._run_job = timed_run_job  # looked up per submit, pickled by name for the spawned workers
    try:
        t0 = time.perf_counter()
        gen.generate(
            suite,
            tasks,
            per_task,
            out,
            workers=workers,
            seed=seed,
            progress=False,
            allow_short=True,
            render_profile=profile,
        )
        wall = time.perf_counter() - t0
    finally:
        gen._run_job = own
    attempts = [json.loads(p.read_text()) for p in (out.parent / TIMING_DIR).glob("*.json")]
    errors = [a for a in attempts if a.get("error")]
    if errors:
        raise RuntimeError(f"{len(errors)} generation attempt(s) raised: {errors[0]['error']}")
    for a in attempts:  # the replay's episode key: the attempt, whose number also seeded the expert
        a["init_index"] = a["attempt"]
    return sorted(attempts, key=lambda a: (a["task_id"], a["attempt"])), wall


def split(attempts: list[dict]) -> list[dict]:
    """Per attempt: project seconds and its parts (DEFINITIONS)."""
    rows = []
    for a in attempts:
        tm = a["timing"]
        total = tm["job_s"] + (tm["idle_s"] or 0.0)
        parts = {p: tm[f"{p}_s"] for p in PARTS[:3]}
        rows.append({"project": total, **parts, "other": total - sum(parts.values()), "build": tm["build_s"]})
    return rows


def generation_study(args, tasks: list[int], work: Path) -> tuple[list[str], dict]:
    """Generate, then replay; -> (table lines, the `generation_floor` section of the results)."""
    from world_modality.sim.suites import step_limit

    load = {"before": os.getloadavg()[0]}
    attempts, wall = run_generation(args.suite, tasks, args.demos, args.workers, work / "dataset", args.render_profile)
    load["after_project"] = os.getloadavg()[0]
    env_kwargs = {"image_size": 128, "render_profile": args.render_profile}  # generate()'s default image size
    floor, floor_wall = replay_all(
        args.suite, attempts, step_limit(args.suite), args.workers, args.replay_batch, env_kwargs, seed=0
    )
    load["after_floor"] = os.getloadavg()[0]
    keys, agree, state_diff = agreement(attempts, floor)
    expected = check_render_settings(attempts, args.render_profile)
    rows, fl = split(attempts), [r["seconds"] for r in floor]
    n, f_med = len(attempts), median(fl)
    med = {k: median([r[k] for r in rows]) for k in ("project", *PARTS)}
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("project", *PARTS, "build")}
    ratio = med["project"] / f_med
    frames = [a["timing"]["camera_frames"] for a in attempts]
    per_frame = median([r["rendering"] / f for r, f in zip(rows, frames) if f])
    builds = [r["build"] for r, a in zip(rows, attempts) if a["timing"]["simulator_builds"]]
    section = {
        "suite": args.suite,
        "tasks": tasks,
        "demonstrations_per_task": args.demos,
        "attempts": n,
        "successes": sum(bool(a["success"]) for a in attempts),
        "workers": args.workers,
        "image_size": env_kwargs["image_size"],
        "render_profile": args.render_profile,
        "render_settings_in_workers": expected,
        "per_attempt_median_s": {"project": round(med["project"], 3), "floor": round(f_med, 3)},
        "ratio_project_vs_floor": round(ratio, 2),
        "ratio_project_vs_floor_median_of_attempts": round(median([r["project"] / f for r, f in zip(rows, fl)]), 2),
        "ratio_goal": RATIO_GOAL,
        "split_median_s": {p: round(med[p], 3) for p in PARTS},
        "split_median_x_floor": {p: round(med[p] / f_med, 2) for p in PARTS},
        "split_mean_s": {p: round(mean[p], 3) for p in PARTS},
        "split_mean_share_of_project": {p: round(mean[p] / mean["project"], 3) for p in PARTS},
        "simulator_builds": len(builds),
        "simulator_build_median_s": round(median(builds), 3) if builds else None,
        "other_of_which_simulator_build_mean_s": round(mean["build"], 3),
        "physics_in_project_vs_floor_median": round(med["physics"] / f_med, 2),
        "floor_reset_median_s": round(median([r["reset_s"] for r in floor]), 3),
        "camera_frames_per_attempt_median": median(frames),
        "rendering_s_per_camera_frame_median": round(per_frame, 4),
        "generate_wall_s": round(wall, 1),
        "floor_wall_s": round(floor_wall, 1),
        "outcome_agreement_rate": sum(agree) / n,
        "outcome_agreement_definition": "replay's (success, control steps) equal the attempt's",
        "max_final_state_diff": max(state_diff),
        "load_avg_1m_by_phase": {k: round(v, 2) for k, v in load.items()},
        "definitions": DEFINITIONS,
        "attempts_detail": [
            {
                "task_id": a["task_id"],
                "attempt": a["attempt"],
                "success": a["success"],
                "steps": a.get("steps"),
                "camera_frames": a["timing"]["camera_frames"],
                **{k: round(v, 4) for k, v in r.items()},
                "floor": round(f, 4),
            }
            for a, r, f in zip(attempts, rows, fl)
        ],
    }
    table = [
        f"generation vs its physics floor: {args.suite} tasks {tasks}, {args.demos} demonstration(s) each "
        f"({n} attempts, {section['successes']} solved), {args.workers} workers, profile {args.render_profile!r}",
        *split_lines("attempt", med, mean, f_med, PARTS),
        f"simulator builds {len(builds)} (median {section['simulator_build_median_s']} s, in other); camera frames "
        f"per attempt median {median(frames):.0f}, {per_frame * 1000:.1f} ms each; generate() wall {wall:.1f} s, "
        f"replay wall {floor_wall:.1f} s",
        f"goal <= {RATIO_GOAL}x: {ratio:.2f}x; replay agrees {sum(agree)}/{n} (success, steps), "
        f"max |final state diff| {max(state_diff):.1e}",
        f"load average (1 min; the machine is shared): {load}",
    ]
    check_agreement(keys, agree, "the generation's attempts")
    return table, section
