"""The evaluation's physics floor (`eval_throughput.py --study`): a study-sized evaluate() whose workers also record
each episode's actions, then those actions replayed from the same starts with physics only (no rendering, no
policy) on as many worker processes, and the project's per-episode time split against that floor."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import median

PARTS = ("physics", "rendering", "policy", "inter_process")
RATIO_GOAL = 1.5  # the issue's: a project's seconds per episode at most 1.5x its physics-only floor
PART_DEFINITIONS = {
    "project": "one worker's seconds per episode: its job (episode, plus a simulator built when the task changes) "
    "and its wait since its previous job (the parent's turn: results back, episodes file, next job out); "
    "worker start-up excluded (start_up_s_per_episode_amortised)",
    "floor": "the same episode's recorded actions replayed from the same start: reset (settle steps) and "
    "control steps, no rendering, no policy, simulator already built",
    "physics": "reset and control steps inside the project's episode",
    "rendering": "camera frames the policy or world window needs",
    "policy": "runner reset and select_action (preprocessing, world encoder, model)",
    "inter_process": "project minus physics, rendering and policy: the parent's turn, simulator construction, "
    "the rollout loop itself",
}


# --- worker side: evaluate()'s own worker, its rollout wrapped to record what was applied ---------------------
class _Recording:
    """A `LiberoEnv` whose `step` keeps each action it was given, and which counts camera frames."""

    def __init__(self, env):
        self._env, self.actions, self.frames = env, [], 0

    def step(self, action):
        self.actions.append(np.asarray(action, dtype=np.float64).reshape(-1).tolist())
        return self._env.step(action)

    def observe(self):
        self.frames += 2  # both cameras
        return self._env.observe()

    def render(self, key):
        self.frames += 1
        return self._env.render(key)

    def __getattr__(self, name):
        return getattr(self._env, name)


def recording_init(settings: dict) -> None:
    """`worker.worker_init`, then each episode also returns its actions and final robot state."""
    from world_modality.evaluate import rollout, worker

    worker.worker_init(settings)
    run_episode = rollout.run_episode

    def recorded(env, *args, **kwargs):
        env = _Recording(env)
        result = run_episode(env, *args, **kwargs)
        return {
            **result,
            "actions": env.actions,
            "final_state": env.state().tolist(),
            "camera_frames": env.frames,
            # What the worker's render context used, read back from it: the policy's profile, or the check fails.
            "render_settings": env.render_settings(),
        }

    rollout.run_episode = recorded  # run_job imports it per call


def replay_job(suite: str, task_id: int, seed: int, max_steps: int, env_kwargs: dict, episodes: list) -> list:
    """Physics only: per (init_index, actions, placement_seed), reset without rendering (from the stored initial
    state, or the fresh placement when a seed is given) and apply the control-step actions in order."""
    from world_modality.sim.env import LiberoEnv

    out = []
    with LiberoEnv(suite, task_id, seed=seed, max_steps=max_steps, **env_kwargs) as env:
        for init_index, actions, placement_seed in episodes:
            t0 = time.perf_counter()
            env.reset(init_index, render=False, placement_seed=placement_seed)
            reset_s = time.perf_counter() - t0
            done, success, info = False, False, {"t": 0}
            for a in actions:
                _, done, success, info = env.step(a)
            seconds = time.perf_counter() - t0
            out.append(
                {
                    "task_id": task_id,
                    "init_index": init_index,
                    "success": bool(success),
                    "steps": int(info["t"]),
                    "done": bool(done),
                    "seconds": seconds,
                    "reset_s": reset_s,
                    "final_state": env.state().tolist(),
                }
            )
    return out


def render_probe(suite: str, task_id: int, env_kwargs: dict, frames: int = 12) -> dict:
    """Seconds per camera frame and per two-camera observation under each render profile (`sim/render_profile.py`),
    interleaved in one process, at the evaluated policy's camera sizes."""
    from world_modality.sim.env import LiberoEnv
    from world_modality.sim.render_profile import PROFILES

    kwargs = {k: v for k, v in env_kwargs.items() if k != "render_profile"}
    times: dict[str, list[float]] = {name: [] for name in PROFILES}
    envs = {
        name: LiberoEnv(suite, task_id, seed=7, max_steps=10 * frames, render_profile=name, **kwargs)
        for name in PROFILES
    }
    try:
        for _ in range(2):
            for name, env in envs.items():
                env.reset(0, render=False)
                env.observe()  # the context's first frame is not typical
                for i in range(frames):
                    env.step((0.3 * np.sin(i), 0.3 * np.cos(i), 0.0, 0.0, 0.0, 0.0, -1.0))
                    t0 = time.perf_counter()
                    env.observe()
                    times[name].append(time.perf_counter() - t0)
    finally:
        for env in envs.values():
            env.close()
    med = {name: median(ts) for name, ts in times.items()}
    return {
        "observe_s": {name: round(v, 4) for name, v in med.items()},
        "camera_frame_s": {name: round(v / 2, 4) for name, v in med.items()},
        "fast_vs_libero": round(med["fast"] / med["libero"], 3),
        "evaluated_profile": env_kwargs.get("render_profile"),
    }


# --- parent side ---------------------------------------------------------------------------------------------
def run_evaluation(ckpt, suite, tasks, n, max_steps, workers, out_dir) -> tuple[list[dict], float]:
    """evaluate() as a user runs it, its workers recording actions; -> (episodes by task and init, wall s)."""
    from world_modality.evaluate import closed_loop

    settings = closed_loop.EvalSettings(
        checkpoint=str(ckpt),
        suite=suite,
        tasks=tuple(tasks),
        n_episodes=n,
        workers=workers,
        seed=7,
        max_steps=max_steps,
        out=str(out_dir),
        device="cpu",
    )
    own = closed_loop.worker_init
    closed_loop.worker_init = recording_init  # looked up when the pool starts
    try:
        t0 = time.perf_counter()
        run = closed_loop.evaluate(settings, progress=False)
        wall = time.perf_counter() - t0
    finally:
        closed_loop.worker_init = own
    if run.errors:
        raise RuntimeError(f"{len(run.errors)} episode(s) ended in an error: {run.errors[0]['error']}")
    return sorted(run.finished, key=lambda r: (r["task_id"], r["init_index"])), wall


def sim_kwargs(ckpt) -> dict:
    """The simulator's construction arguments in evaluate()'s workers for this checkpoint, its render profile
    (the training data's, from the checkpoint's data_info) included."""
    from world_modality.inference.runner import PolicyRunner

    runner = PolicyRunner(ckpt, device="cpu")
    return {
        "image_size": runner.cfg.data.image_size,
        "camera_sizes": runner.render_sizes,
        "render_profile": runner.render_profile,
    }


def replay_all(suite, episodes, max_steps, workers, per_job: int, env_kwargs: dict, seed: int = 7):
    """`episodes` (dicts: task_id, init_index, actions, optional placement_seed) replayed with `replay_job` on
    `workers` processes, jobs of `per_job` episodes of one task; -> (results by task and init, wall s)."""
    from world_modality.workers import WorkerPool

    jobs = []
    for t in sorted({e["task_id"] for e in episodes}):
        mine = [(e["init_index"], e["actions"], e.get("placement_seed")) for e in episodes if e["task_id"] == t]
        jobs += [(t, mine[i : i + per_job]) for i in range(0, len(mine), per_job)]
    results = []
    t0 = time.perf_counter()
    with WorkerPool(workers, timeout_s=3600) as pool:
        queue = list(jobs)
        while queue or len(pool):
            while queue and pool.free > 0:
                t, eps = queue.pop(0)
                pool.submit((t, eps[0][0]), replay_job, suite, t, seed, max_steps, env_kwargs, eps)
            _, rec = pool.next_finished()
            if not isinstance(rec, list):
                raise RuntimeError(f"a replay job was lost: {rec}")
            results += rec
    return sorted(results, key=lambda r: (r["task_id"], r["init_index"])), time.perf_counter() - t0


def run_floor(ckpt, suite, episodes, max_steps, workers, per_job: int) -> tuple[list[dict], float]:
    """The evaluation's recorded actions replayed from the same stored initial states, simulator built as in its
    workers (the same render profile, though nothing is rendered)."""
    return replay_all(suite, episodes, max_steps, workers, per_job, sim_kwargs(ckpt))


def check_render_settings(project: list[dict], profile: str) -> dict:
    """The settings every episode's (or attempt's) render context used, read back in its worker
    (`LiberoEnv.render_settings`); one rendered with other settings than `profile`'s is an error naming it."""
    from world_modality.sim.render_profile import render_profile

    expected = render_profile(profile).expected_settings()
    # render_faces (under simplified meshes) depends on the task's meshes, not on the profile.
    read = [{k: v for k, v in e["render_settings"].items() if k != "render_faces"} for e in project]
    bad = [(e["task_id"], e["init_index"], e["render_settings"]) for e, r in zip(project, read) if r != expected]
    if bad:
        raise AssertionError(f"(task, init/attempt, settings) {bad[:3]} differ from profile {profile!r}: {expected}")
    return expected


def split(project: list[dict]) -> list[dict]:
    """Per episode: project seconds and its parts (PART_DEFINITIONS)."""
    rows = []
    for e in project:
        tm = e["timing"]
        total = tm["job_s"] + (tm["idle_s"] or 0.0)
        parts = {p: tm[f"{p}_s"] for p in PARTS[:3]}
        rows.append({"project": total, **parts, "inter_process": total - sum(parts.values())})
    return rows


def study(ckpt, args, max_steps: int, tasks: list[int], out_dir: Path) -> tuple[list[str], dict]:
    """Run both arms; -> (table lines, the `floor` section of the results)."""
    load = {"before": os.getloadavg()[0]}
    project, floor, wall, floor_wall = [], [], 0.0, 0.0
    rounds = [r for r in np.array_split(np.asarray(tasks), max(1, min(args.rounds, len(tasks)))) if len(r)]
    for i, some in enumerate(rounds):  # the arms alternate, so a change in the machine's load falls on both
        got, w = run_evaluation(
            ckpt, args.suite, some.tolist(), args.episodes, max_steps, args.workers, out_dir / f"round{i}"
        )
        load[f"round{i}_after_project"] = os.getloadavg()[0]
        replayed, fw = run_floor(ckpt, args.suite, got, max_steps, args.workers, args.replay_batch)
        load[f"round{i}_after_floor"] = os.getloadavg()[0]
        project, floor, wall, floor_wall = project + got, floor + replayed, wall + w, floor_wall + fw
    kwargs = sim_kwargs(ckpt)
    settings = check_render_settings(project, kwargs["render_profile"])
    probe = render_probe(args.suite, tasks[0], kwargs)
    keys, agree, state_diff = agreement(project, floor)
    rows = split(project)
    fl = [r["seconds"] for r in floor]
    n = len(project)
    startup = sum(e["timing"].get("startup_s", 0.0) for e in project)
    med = {k: median([r[k] for r in rows]) for k in ("project", *PARTS)}
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("project", *PARTS)}
    ratio = med["project"] / median(fl)
    per_frame = median([r["rendering"] / p["camera_frames"] for p, r in zip(project, rows)])
    ratios = [r["project"] / f for r, f in zip(rows, fl)]
    section = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "suite": args.suite,
        "tasks": tasks,
        "episodes_per_task": args.episodes,
        "episodes": n,
        "max_steps": max_steps,
        "workers": args.workers,
        "rounds": [r.tolist() for r in rounds],
        "per_episode_median_s": {"project": round(med["project"], 3), "floor": round(median(fl), 3)},
        "ratio_project_vs_floor": round(ratio, 2),
        "ratio_project_vs_floor_median_of_episodes": round(median(ratios), 2),
        "ratio_goal": RATIO_GOAL,
        "split_median_s": {p: round(med[p], 3) for p in PARTS},
        "split_median_x_floor": {p: round(med[p] / median(fl), 2) for p in PARTS},
        "split_mean_s": {p: round(mean[p], 3) for p in PARTS},
        "split_mean_share_of_project": {p: round(mean[p] / mean["project"], 3) for p in PARTS},
        "physics_in_project_vs_floor_median": round(med["physics"] / median(fl), 2),
        "floor_reset_median_s": round(median([r["reset_s"] for r in floor]), 3),
        "camera_frames_per_episode_median": median([p["camera_frames"] for p in project]),
        "rendering_s_per_camera_frame_median": round(per_frame, 4),
        "render_profile": kwargs["render_profile"],
        "render_settings_in_workers": settings,
        "render_profiles": probe,
        "start_up_s_per_episode_amortised": round(startup / n, 3),
        "evaluate_wall_s": round(wall, 1),
        "evaluate_wall_s_x_workers_per_episode": round(wall * args.workers / n, 3),
        "floor_wall_s": round(floor_wall, 1),
        "outcome_agreement_rate": sum(agree) / n,
        "outcome_agreement_definition": "replay's (success, control steps) equal the project episode's",
        "max_final_state_diff": max(state_diff),
        "successes": sum(bool(p["success"]) for p in project),
        "load_avg_1m_by_phase": {k: round(v, 2) for k, v in load.items()},
        "definitions": PART_DEFINITIONS,
        "episodes_detail": [
            {
                "task_id": p["task_id"],
                "init_index": p["init_index"],
                "steps": p["steps"],
                "success": p["success"],
                **{k: round(v, 4) for k, v in r.items()},
                "floor": round(f, 4),
                "camera_frames": p["camera_frames"],
            }
            for p, r, f in zip(project, rows, fl)
        ],
    }
    table = [
        f"evaluation vs its physics floor: {args.suite} tasks {tasks}, {args.episodes} init states each "
        f"({n} episodes), {max_steps} control steps max, {args.workers} workers",
        *split_lines("episode", med, mean, median(fl), PARTS),
        f"worker start-up {startup:.1f} s in all ({startup / n:.2f} s per episode, not in the above); "
        f"evaluate() wall {wall:.1f} s in all = {wall * args.workers / n:.2f} s x {args.workers} workers per episode; "
        f"replay wall {floor_wall:.1f} s; {len(rounds)} round(s) of evaluate() then replay",
        f"floor's reset (model reload, settle steps) median {median([r['reset_s'] for r in floor]):.2f} s; "
        f"camera frames per episode median {median([p['camera_frames'] for p in project]):.0f}",
        f"goal <= {RATIO_GOAL}x: {ratio:.2f}x; replay agrees {sum(agree)}/{n} (success, steps), "
        f"max |final state diff| {max(state_diff):.1e}",
        *profile_lines(kwargs["render_profile"], settings, per_frame, probe),
        f"load average (1 min; the machine is shared): {load}",
    ]
    check_agreement(keys, agree, "the evaluation's")
    return table, section


def split_lines(unit: str, med: dict, mean: dict, floor_median: float, parts) -> list[str]:
    """The table's split: the project's median per part against the floor, then each part's mean share."""
    return [
        f"{'per ' + unit + ', median s':<28}{'s':>8}{'x floor':>9}",
        f"{'project':<28}{med['project']:8.3f}{med['project'] / floor_median:9.2f}",
        *(f"{'  ' + p:<28}{med[p]:8.3f}{med[p] / floor_median:9.2f}" for p in parts),
        f"{'floor (physics replay)':<28}{floor_median:8.3f}{1.0:9.2f}",
        "mean share of project time: " + ", ".join(f"{p} {mean[p] / mean['project']:.0%}" for p in parts),
    ]


def agreement(project: list[dict], floor: list[dict]) -> tuple[list, list[bool], list[float]]:
    """Per episode: its (task_id, init_index), whether the replay's (success, control steps) equal the project's,
    and the largest difference of their final robot states."""
    keys = [(e["task_id"], e["init_index"]) for e in project]
    got = [(r["task_id"], r["init_index"]) for r in floor]
    if keys != got:
        raise AssertionError(f"the replay covers episodes {got}, expected the project's {keys}")
    agree = [(p["success"], p["steps"]) == (r["success"], r["steps"]) for p, r in zip(project, floor)]
    diff = [float(np.max(np.abs(np.subtract(p["final_state"], r["final_state"])))) for p, r in zip(project, floor)]
    return keys, agree, diff


def check_agreement(keys: list, agree: list[bool], whose: str) -> None:
    """A floor that replays other outcomes than the project's is no floor of it: an error naming the episodes."""
    if not all(agree):
        bad = [k for k, a in zip(keys, agree) if not a]
        raise AssertionError(f"replayed outcomes differ from {whose} for (task, init/attempt) {bad}")


def profile_lines(profile: str, settings: dict, per_frame: float, probe: dict) -> list[str]:
    """Table lines: the profile the project rendered with, its measured per-frame cost there, and each profile's
    per-frame cost in one process (render_probe)."""
    each = ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in probe["camera_frame_s"].items())
    return [
        f"render profile {profile!r} (the policy's training data's; read back in the workers: {settings}); "
        f"rendering per camera frame in the project median {per_frame * 1000:.1f} ms",
        f"per camera frame, each profile in one process (interleaved): {each}; fast/libero "
        f"{probe['fast_vs_libero']:.2f}",
    ]
