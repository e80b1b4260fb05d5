"""Closed-loop evaluation throughput (episodes per hour): the project's evaluation (parallel
workers, renders only at policy steps) vs a naive single-process loop that renders both cameras
every env step, on the same episodes with the same policy, and whether their outcomes agree.

    .venv/bin/python bench/eval_throughput.py                       # libero_spatial task 0, init 0-3, 160 steps
    .venv/bin/python bench/eval_throughput.py --quick               # 2 episodes of 16 steps
    .venv/bin/python bench/eval_throughput.py --episodes 10 --max-steps 0   # the suite's step limit
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import emit, median, tiny_checkpoint

import numpy as np

ENV_SEED = 7  # EvalSettings' default, as in the public LIBERO scripts


def naive_episode(env, runner, init_index: int, replan_every: int, seed: int) -> dict:
    """The same policy schedule as the project's rollout, but every env step renders both cameras."""
    t0 = time.perf_counter()
    runner.reset(seed)
    m, s, cspf = runner.num_frames, runner.frame_stride, runner.control_steps_per_frame
    obs = env.reset(init_index, render=True)
    history = [obs[runner.world_key]]  # one world-camera frame per dataset frame
    frame, done, success, info = 0, False, False, {"t": 0}
    while not done:
        if frame % replan_every == 0:
            window = [history[max(frame - j * s, 0)] for j in reversed(range(m))]
            chunk = runner.act(obs, np.stack(window) if runner.uses_world else None)
        action = chunk[frame % replan_every]
        for _ in range(cspf):
            step_obs, done, success, info = env.step(action, render=True)
            if done:
                break
        frame += 1
        if not done:
            obs = step_obs
            history.append(obs[runner.world_key])
    return {"success": bool(success), "steps": int(info["t"]), "frames": frame,
            "seconds": time.perf_counter() - t0, "final_state": env.state().tolist()}


def run_naive(ckpt, suite, task, inits, replan, max_steps) -> tuple[list[dict], float]:
    import torch

    torch.set_num_threads(1)  # as each evaluation worker does, so both arms compute the same actions
    from world_modality.evaluate.runner import PolicyRunner
    from world_modality.sim.env import LiberoEnv

    t0 = time.perf_counter()
    runner = PolicyRunner(ckpt, "predicted", seed=ENV_SEED)
    with LiberoEnv(suite, task, image_size=runner.cfg.data.image_size, seed=ENV_SEED, max_steps=max_steps) as env:
        eps = [naive_episode(env, runner, k, replan, ENV_SEED * 100_003 + task * 1_000 + k) for k in inits]
    return eps, time.perf_counter() - t0


def project_final_states(ckpt, suite, task, inits, replan, max_steps) -> list[list[float]]:
    """The project's own rollout in this process, to compare trajectories (final robot state),
    which the episodes file does not record."""
    from world_modality.evaluate.rollout import run_episode
    from world_modality.evaluate.runner import PolicyRunner
    from world_modality.sim.env import LiberoEnv

    runner = PolicyRunner(ckpt, "predicted", seed=ENV_SEED)
    out = []
    with LiberoEnv(suite, task, image_size=runner.cfg.data.image_size, seed=ENV_SEED, max_steps=max_steps) as env:
        for k in inits:
            run_episode(env, runner, k, replan, seed=ENV_SEED * 100_003 + task * 1_000 + k)
            out.append(env.state().tolist())
    return out


def run_project(ckpt, suite, task, n, max_steps, workers, out_dir) -> tuple[list[dict], float]:
    from world_modality.evaluate.closed_loop import EvalSettings, evaluate, read_episodes

    t0 = time.perf_counter()
    path = evaluate(EvalSettings(checkpoint=str(ckpt), suite=suite, tasks=(task,), n_episodes=n, workers=workers,
                                 seed=ENV_SEED, max_steps=max_steps, out=str(out_dir)), progress=False)
    wall = time.perf_counter() - t0
    return sorted(read_episodes(path), key=lambda r: r["init_index"]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=4, help="initial states 0..n-1")
    ap.add_argument("--max-steps", type=int, default=160, help="control steps per episode (0: the suite's limit)")
    ap.add_argument("--check-states", type=int, default=2,
                    help="episodes whose final robot state is compared with the project's own rollout (costs one episode each)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 episodes of 16 steps")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.max_steps, args.check_states = 2, 16, 1
    from world_modality.sim.suites import step_limit

    max_steps = args.max_steps or step_limit(args.suite)
    inits = list(range(args.episodes))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp) / "ckpt", "E2")
        from world_modality.policy.checkpoint import load_checkpoint

        pcfg = load_checkpoint(ckpt).cfg.policy
        replan = max(1, pcfg.chunk_size // 2)  # the evaluation's default
        proj, proj_wall = run_project(ckpt, args.suite, args.task, args.episodes, max_steps, args.workers, Path(tmp) / "eval")
        naive, naive_wall = run_naive(ckpt, args.suite, args.task, inits, replan, max_steps)
        ref_states = project_final_states(ckpt, args.suite, args.task, inits[:args.check_states], replan, max_steps)
    same = [p["success"] == q["success"] and p["steps"] == q["steps"] and p["frames"] == q["frames"] for p, q in zip(proj, naive)]
    state_diff = [float(np.max(np.abs(np.subtract(a, q["final_state"])))) for a, q in zip(ref_states, naive)]
    eph = {"project": 3600 * len(proj) / proj_wall, "naive": 3600 * len(naive) / naive_wall}
    per_ep = {"project": median([p["seconds"] for p in proj]), "naive": median([q["seconds"] for q in naive])}
    ratio = eph["project"] / eph["naive"]
    state_diff += [float("nan")] * (len(naive) - len(state_diff))
    checked = [d for d in state_diff if d == d]
    table = [f"eval throughput: {args.suite} task {args.task}, init states 0-{args.episodes - 1}, {max_steps} control steps max, "
             f"replan every {replan} frames, {args.workers} workers vs 1 process",
             f"{'init':>4}  {'project: ok steps frames  s':>28}  {'naive: ok steps frames  s':>26}  agree  |final state diff|",
             *(f"{k:>4}  {int(p['success']):>10} {p['steps']:>5} {p['frames']:>6} {p['seconds']:5.1f}  "
               f"{int(q['success']):>8} {q['steps']:>5} {q['frames']:>6} {q['seconds']:5.1f}  {str(a):>5}  {d:.2e}"
               for k, p, q, a, d in zip(inits, proj, naive, same, state_diff)),
             f"project: {proj_wall:6.1f} s wall (incl. worker start) -> {eph['project']:6.0f} episodes/h",
             f"naive:   {naive_wall:6.1f} s wall (incl. env/policy load) -> {eph['naive']:6.0f} episodes/h",
             f"ratio {ratio:.2f}x (goal >= 3x); per-episode median {per_ep['project']:.1f} s vs {per_ep['naive']:.1f} s "
             f"({per_ep['naive'] / per_ep['project']:.2f}x on one core); outcomes agree {sum(same)}/{len(same)}"]
    figures = {
        "episodes_per_hour_project": round(eph["project"], 1), "episodes_per_hour_naive": round(eph["naive"], 1),
        "ratio_project_vs_naive": round(ratio, 2),
        "per_episode_median_s_project": round(per_ep["project"], 2), "per_episode_median_s_naive": round(per_ep["naive"], 2),
        "ratio_per_episode_single_core": round(per_ep["naive"] / per_ep["project"], 2),
        "outcome_agreement_rate": sum(same) / len(same), "max_final_state_diff": max(checked, default=None), "final_states_checked": len(checked),
        "outcome_agreement_rate_definition": "same success, control steps and frames per episode",
        "successes_project": sum(p["success"] for p in proj), "successes_naive": sum(q["success"] for q in naive),
        "suite": args.suite, "task": args.task, "episodes": args.episodes, "max_steps": max_steps,
        "workers": args.workers, "replan_every": replan,
    }
    details = {"project_episodes": [{k: p[k] for k in ("init_index", "success", "steps", "frames", "seconds")} for p in proj],
               "naive_episodes": [{k: v for k, v in q.items() if k != "final_state"} for q in naive],
               "final_state_diff": state_diff}
    emit("eval_throughput", table, figures, details, args.out)


if __name__ == "__main__":
    main()
