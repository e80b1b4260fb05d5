"""Closed-loop evaluation throughput (episodes per hour): the project's evaluation (parallel
workers, renders only at policy steps) vs a naive single-process loop that renders both cameras
every env step, on the same episodes with the same policy, and whether their outcomes agree;
in one process, episode by episode, the project's rollout vs the naive loop on one core.

    .venv/bin/python bench/eval_throughput.py                       # libero_spatial task 0, init 0-3, 120 steps
    .venv/bin/python bench/eval_throughput.py --quick               # 2 episodes of 16 steps
    .venv/bin/python bench/eval_throughput.py --episodes 10 --max-steps 0   # the suite's step limit
    .venv/bin/python bench/eval_throughput.py --study               # 5 tasks x 20 init states vs the physics floor
    .venv/bin/python bench/eval_throughput.py --study --quick       # 2 tasks x 2 init states of 16 steps
    .venv/bin/python bench/eval_throughput.py --generation          # generate() for 5 tasks x 4 demos vs its floor
    .venv/bin/python bench/eval_throughput.py --generation --quick  # 2 tasks x 1 demo

--study (_floor.py) runs a study-sized evaluate() of a policy whose training data records --render-profile (default
the generated data's, "fast"), its workers recording each episode's actions, replays them with physics only, and
writes its figures under "floor" in the results file, beside the comparison's. --generation (_generation_floor.py)
does the same for generate()'s attempts, under "generation_floor". Each run replaces only its own section.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    RESULTS_DIR,
    command,
    commit,
    emit,
    fixture_dataset,
    host,
    median,
    tiny_checkpoint,
    tiny_config,
    undeclared_derived,
)

ENV_SEED = 7  # EvalSettings' default, as in the public LIBERO scripts
SECTIONS = ("floor", "generation_floor")  # written by --study and --generation, kept by the other runs
EPH_DEFINITION = (
    "episodes / seconds; project: evaluate()'s wall time incl. worker start; naive: its env and policy "
    "load plus the sum of its timed episodes (run interleaved with the in-process rollouts, not counted)"
)
# The steady-state figures are not measured: they scale one episode's median time to an hour.
STEADY_FORMULAS = {
    "episodes_per_hour_steady_project_derived": "3600 * workers / per_episode_median_s_evaluate_worker",
    "episodes_per_hour_steady_naive_derived": "3600 / per_episode_median_s_naive",
    "ratio_steady_state_derived": "episodes_per_hour_steady_project_derived / episodes_per_hour_steady_naive_derived",
}
STEADY_ASSUMPTIONS = {
    "episodes_per_hour_steady_project_derived": "the workers run in parallel with no loss (perfect scaling) and "
    "worker start-up is amortised; neither measured",
    "episodes_per_hour_steady_naive_derived": "start-up (env and policy load) is amortised; not measured",
    "ratio_steady_state_derived": "both of the above",
}


def naive_episode(env, runner, init_index: int, replan_every: int, seed: int) -> dict:
    """The same policy schedule as the project's rollout, but every env step renders both cameras (and the
    policy is handed every frame's observation and world frame)."""
    t0 = time.perf_counter()
    runner.reset(seed, replan_every=replan_every)
    obs = env.reset(init_index, render=True)
    frame, done, success, info = 0, False, False, {"t": 0}
    while not done:
        action = runner.select_action(obs, obs[runner.world_key])  # one world-camera frame per dataset frame
        for _ in range(runner.control_steps_per_frame):
            step_obs, done, success, info = env.step(action, render=True)
            if done:
                break
        frame += 1
        if not done:
            obs = step_obs
    return {
        "success": bool(success),
        "steps": int(info["t"]),
        "frames": frame,
        "seconds": time.perf_counter() - t0,
        "final_state": env.state().tolist(),
    }


def project_episode(env, runner, init_index: int, replan_every: int, seed: int) -> dict:
    """The project's own rollout, timed, with the final robot state the episodes file does not record."""
    from world_modality.evaluate.rollout import run_episode

    t0 = time.perf_counter()
    r = run_episode(env, runner, init_index, replan_every, seed=seed)
    return {**r, "seconds": time.perf_counter() - t0, "final_state": env.state().tolist()}


def run_paired(ckpt, suite, task, inits, replan, max_steps) -> tuple[list[dict], list[dict], float]:
    """One process, one env, one policy: per initial state the project's rollout then the naive
    loop, back to back, so both meet the same machine load. Returns both and the setup seconds."""
    import torch

    torch.set_num_threads(1)  # as each evaluation worker does, so all arms compute the same actions
    from world_modality.inference.runner import PolicyRunner
    from world_modality.sim.env import LiberoEnv

    t0 = time.perf_counter()
    runner = PolicyRunner(ckpt, "predicted", seed=ENV_SEED, device="cpu")  # CPU in every arm, as measured
    proj, naive = [], []
    with LiberoEnv(
        suite,
        task,
        image_size=runner.cfg.data.image_size,
        seed=ENV_SEED,
        max_steps=max_steps,
        camera_sizes=runner.render_sizes,
        render_profile=runner.render_profile,  # as evaluate()'s workers: the training data's
    ) as env:
        setup = time.perf_counter() - t0
        for k in inits:
            seed = ENV_SEED * 100_003 + task * 1_000 + k  # the evaluation's per-episode seed
            proj.append(project_episode(env, runner, k, replan, seed))
            naive.append(naive_episode(env, runner, k, replan, seed))
    return proj, naive, setup


def run_project(ckpt, suite, task, n, max_steps, workers, out_dir) -> tuple[list[dict], float]:
    from world_modality.evaluate.closed_loop import EvalSettings, evaluate, read_episodes

    t0 = time.perf_counter()
    run = evaluate(
        EvalSettings(
            checkpoint=str(ckpt),
            suite=suite,
            tasks=(task,),
            n_episodes=n,
            workers=workers,
            seed=ENV_SEED,
            max_steps=max_steps,
            out=str(out_dir),
            device="cpu",
        ),
        progress=False,
    )
    wall = time.perf_counter() - t0
    if run.errors:
        raise RuntimeError(
            f"{len(run.errors)} episode(s) of the timed evaluation ended in an error: {run.errors[0]['error']}"
        )
    return sorted(read_episodes(run.path), key=lambda r: r["init_index"]), wall


def warm_simulator(suite: str, task: int) -> float:
    """Reset and step the simulator once before either arm is timed. robosuite compiles its numba
    kernels on first use in a new environment and caches them on disk: in a fresh .venv that cost
    (about 7 s per process here) fell on whichever arm ran first, the project's, halving its figure."""
    from world_modality.sim.env import LiberoEnv
    from world_modality.sim.suites import NOOP_ACTION

    t0 = time.perf_counter()
    with LiberoEnv(suite, task, image_size=32, seed=ENV_SEED, max_steps=4) as env:
        env.reset(0, render=False)
        while not env.step(NOOP_ACTION)[1]:
            pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=None, help="initial states 0..n-1 (per task with --study)")
    ap.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="control steps per episode (0: the suite's limit; default 120, --study: the suite's limit)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 episodes (per task with --study) of 16 steps")
    ap.add_argument("--study", action="store_true", help="the project's episodes vs their physics floor")
    ap.add_argument("--tasks", default="0-4", help="--study, --generation: task ids, e.g. 0-4 or 0,3")
    ap.add_argument("--rounds", type=int, default=2, help="--study: evaluate, then replay, per group of tasks")
    ap.add_argument("--replay-batch", type=int, default=10, help="--study, --generation: episodes per replay job")
    ap.add_argument("--generation", action="store_true", help="generate()'s attempts vs their physics floor")
    ap.add_argument("--demos", type=int, default=4, help="--generation: demonstrations per task (--quick: 1)")
    ap.add_argument(
        "--render-profile",
        default=None,
        help="--study: the profile the policy's training data records; --generation: the one generated with "
        "(default: the generator's, 'fast')",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.study and args.generation:
        ap.error("--study and --generation are separate runs; give one of them")
    from world_modality.sim.render_profile import DEFAULT_GENERATED, render_profile

    try:
        args.render_profile = render_profile(args.render_profile or DEFAULT_GENERATED).name
    except ValueError as e:
        ap.error(str(e))
    if args.generation:
        return main_generation(args)
    if args.quick:
        args.episodes, args.max_steps = 2, 16
    if args.episodes is None:
        args.episodes = 20 if args.study else 4
    if args.max_steps is None:
        args.max_steps = 0 if args.study else 120
    from world_modality.sim.suites import step_limit

    if args.study:
        return main_study(args, step_limit(args.suite) if not args.max_steps else args.max_steps)

    max_steps = args.max_steps or step_limit(args.suite)
    inits = list(range(args.episodes))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp) / "ckpt", "E2")
        from world_modality.policy.checkpoint import load_checkpoint

        pcfg = load_checkpoint(ckpt).cfg.policy
        replan = max(1, pcfg.chunk_size // 2)  # the evaluation's default
        warm_s = warm_simulator(args.suite, args.task)
        proj, proj_wall = run_project(
            ckpt, args.suite, args.task, args.episodes, max_steps, args.workers, Path(tmp) / "eval"
        )
        inproc, naive, setup = run_paired(ckpt, args.suite, args.task, inits, replan, max_steps)
    keys = ("success", "steps", "frames")
    same = [all(p[k] == q[k] for k in keys) for p, q in zip(proj, naive)]
    same_inproc = [all(p[k] == q[k] for k in keys) for p, q in zip(inproc, naive)]
    state_diff = [float(np.max(np.abs(np.subtract(p["final_state"], q["final_state"])))) for p, q in zip(inproc, naive)]
    naive_wall = setup + sum(q["seconds"] for q in naive)
    eph = {"project": 3600 * len(proj) / proj_wall, "naive": 3600 * len(naive) / naive_wall}
    ratio = eph["project"] / eph["naive"]
    # Without start-up costs: each worker's episode time, as a long evaluation would see it.
    steady = {
        "project": 3600 * args.workers / median([p["seconds"] for p in proj]),
        "naive": 3600 / median([q["seconds"] for q in naive]),
    }
    paired = median([q["seconds"] / p["seconds"] for p, q in zip(inproc, naive)])
    table = [
        f"eval throughput: {args.suite} task {args.task}, init states 0-{args.episodes - 1}, "
        f"{max_steps} control steps max, "
        f"replan every {replan} frames; project evaluation on {args.workers} workers vs a naive loop in 1 process",
        f"{'init':>4}  {'evaluate(): ok steps frames  s':>31}  {'rollout 1 core: s':>17}  "
        f"{'naive: ok steps frames  s':>26}"
        f"  agree  |final state diff|",
        *(
            f"{k:>4}  {int(p['success']):>13} {p['steps']:>5} {p['frames']:>6} {p['seconds']:5.1f}  "
            f"{r['seconds']:17.1f}  "
            f"{int(q['success']):>8} {q['steps']:>5} {q['frames']:>6} {q['seconds']:5.1f}  {str(a):>5}  {d:.1e}"
            for k, p, r, q, a, d in zip(inits, proj, inproc, naive, same, state_diff)
        ),
        f"simulator warm-up before timing (robosuite's numba kernels; not counted in either arm): {warm_s:.1f} s",
        f"project evaluate(): {proj_wall:6.1f} s wall (incl. worker start) -> {eph['project']:6.0f} episodes/h",
        f"naive loop:         {naive_wall:6.1f} s wall (incl. env/policy load) -> {eph['naive']:6.0f} episodes/h",
        f"steady state, derived, not measured (3600 x workers / per-episode median: assumes the workers scale "
        f"perfectly and start-up is amortised): {steady['project']:6.0f} vs {steady['naive']:6.0f} episodes/h "
        f"= {steady['project'] / steady['naive']:.2f}x",
        f"ratio {ratio:.2f}x (goal >= 3x); on one core, episode by episode: {paired:.2f}x "
        f"(median of naive/rollout seconds); outcomes agree {sum(same)}/{len(same)}, "
        f"final states identical {sum(d == 0 for d in state_diff)}/{len(state_diff)}",
    ]
    figures = {
        "episodes_per_hour_project": round(eph["project"], 1),
        "episodes_per_hour_naive": round(eph["naive"], 1),
        "ratio_project_vs_naive": round(ratio, 2),
        "simulator_warmup_s_untimed": round(warm_s, 1),
        "ratio_per_episode_single_core": round(paired, 2),
        "episodes_per_hour_definition": EPH_DEFINITION,
        "episodes_per_hour_steady_project_derived": round(steady["project"], 1),
        "episodes_per_hour_steady_naive_derived": round(steady["naive"], 1),
        "ratio_steady_state_derived": round(steady["project"] / steady["naive"], 2),
        "derived": STEADY_FORMULAS,
        "derived_assumptions": STEADY_ASSUMPTIONS,
        "per_episode_median_s_rollout_single_core": round(median([p["seconds"] for p in inproc]), 2),
        "per_episode_median_s_naive": round(median([q["seconds"] for q in naive]), 2),
        "per_episode_median_s_evaluate_worker": round(median([p["seconds"] for p in proj]), 2),
        "outcome_agreement_rate": sum(same) / len(same),
        "outcome_agreement_rate_in_process": sum(same_inproc) / len(same_inproc),
        "outcome_agreement_rate_definition": "same success, control steps and frames per episode",
        "max_final_state_diff": max(state_diff),
        "successes_project": sum(p["success"] for p in proj),
        "successes_naive": sum(q["success"] for q in naive),
        "suite": args.suite,
        "task": args.task,
        "episodes": args.episodes,
        "max_steps": max_steps,
        "workers": args.workers,
        "replan_every": replan,
    }

    def strip(eps):
        return [{k: v for k, v in e.items() if k not in ("final_state", "checkpoint")} for e in eps]

    details = {
        "evaluate_episodes": strip(proj),
        "rollout_episodes": strip(inproc),
        "naive_episodes": strip(naive),
        "final_state_diff": state_diff,
        "project_wall_s": proj_wall,
        "naive_wall_s": naive_wall,
    }
    dest = Path(args.out) if args.out else RESULTS_DIR / "eval_throughput.json"
    old = json.loads(dest.read_text()) if dest.exists() else {}
    for key in SECTIONS:  # --study's and --generation's runs, kept with their own provenance and formulas
        if key in old:
            details[key] = old[key]
            for meta in ("derived", "derived_assumptions"):
                figures[meta] = {**figures[meta], **section_meta(old, meta, key)}
    emit("eval_throughput", table, figures, details, args.out)


def section_meta(data: dict, meta: str, key: str) -> dict:
    """The entries of data[meta] ("derived" or "derived_assumptions") about figures of section `key`."""
    return {k: v for k, v in (data.get(meta) or {}).items() if k.startswith(key + ".")}


def profiled_checkpoint(workdir: Path, profile: str) -> Path:
    """tiny_checkpoint's policy, its fixture dataset labelled as rendered with `profile` (as a generated dataset
    records it), so evaluate() renders with that profile as it would for a policy trained on generated data."""
    from world_modality.sim.render_profile import INFO_KEY
    from world_modality.train import train

    data = fixture_dataset(workdir / "fixture", n_episodes=4, length=16, image_size=128)
    info_path = data / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "control_steps_per_frame": 2, INFO_KEY: profile}, indent=2))
    return train(tiny_config(data, workdir / "E2", "E2", image_size=128), progress=False)


def main_study(args, max_steps: int) -> None:
    from _floor import study

    tasks = parse_tasks(args.tasks)
    if args.quick:
        tasks = tasks[:2]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = profiled_checkpoint(Path(tmp) / "ckpt", args.render_profile)
        warm_s = warm_simulator(args.suite, tasks[0])
        table, section = study(ckpt, args, max_steps, tasks, Path(tmp) / "eval")
    write_section(args, "floor", table, {**section, "simulator_warmup_s_untimed": round(warm_s, 1)})


def main_generation(args) -> None:
    """generate() for --demos demonstrations of each of --tasks vs its physics floor; section `generation_floor`."""
    from _generation_floor import generation_study

    tasks = parse_tasks(args.tasks)
    if args.quick:
        tasks, args.demos = tasks[:2], 1
    if args.demos < 1:
        raise SystemExit(f"--demos must be >= 1, got {args.demos}")
    with tempfile.TemporaryDirectory() as tmp:
        warm_s = warm_simulator(args.suite, tasks[0])
        table, section = generation_study(args, tasks, Path(tmp))
    write_section(args, "generation_floor", table, {**section, "simulator_warmup_s_untimed": round(warm_s, 1)})


def write_section(args, key: str, table: list[str], section: dict) -> None:
    """Print the table; put `section` with its provenance under `key` of the results file (a --quick run only to
    an explicit --out), dropping that section's stale formulas; end stdout with the section as one JSON line."""
    section = {**section, "commit": commit(), "command": command(), **host()}
    section["utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    section["host_note"] = "a shared machine: other jobs ran on its cores during the run (load_avg_1m)"
    print("\n".join(table), flush=True)
    path = Path(args.out) if args.out else (None if args.quick else RESULTS_DIR / "eval_throughput.json")
    if path is not None:
        data = json.loads(path.read_text()) if path.exists() else {"benchmark": "eval_throughput"}
        data[key] = section
        for meta in ("derived", "derived_assumptions"):  # the section is measured: no formula of its own left
            stale = section_meta(data, meta, key)
            data[meta] = {k: v for k, v in (data.get(meta) or {}).items() if k not in stale}
        problems = undeclared_derived(data)
        if problems:
            raise ValueError(f"{path}: {'; '.join(problems)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
    detail = ("episodes_detail", "attempts_detail")
    print(json.dumps({k: v for k, v in section.items() if k not in detail}), flush=True)


def parse_tasks(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


if __name__ == "__main__":
    main()
