"""Per-task success of the scripted expert, from fresh placements (default) or the benchmark's stored initial states.

With `--placements fresh` episode i of task t starts from LIBERO's own placement sampler seeded with
`placement_seed(seed, t, i)` (below): never a stored-state reset, and not a placement `generate` records demonstrations
from. Runs in the dataset regime of `world_modality.sim.record.run_expert`: the expert is queried once
per saved frame (10 fps) and each action is held for 2 control steps (20 Hz sim). Tasks are spread
over worker processes (spawn, one env per task per process). Prints a per-task table and, as the
last line, one JSON object with the figures, which is also written to
bench/results/expert_success_<suite>.json (or --out).

    .venv/bin/python bench/expert_success.py --suite libero_spatial --workers 2
    .venv/bin/python bench/expert_success.py --suite libero_object --tasks 0,3 --init-states 0-9
    .venv/bin/python bench/expert_success.py --suite libero_goal --placements stored
    .venv/bin/python bench/expert_success.py --suite libero_spatial --tasks 4,7,9 --update

Each task row names the commit it was measured at (`-dirty`: with uncommitted changes to the code); `--update`
re-measures the named tasks and replaces their rows in the existing results file, keeping the others with their own
commits.

A task below its suite's bar (BARS) is listed under "below_bar" with the phases its failed episodes ended in.

An episode that raises (a skill not written, a simulator fault) is an error, not an expert failure: counted under
"errors" (per task with its initial states), left out of every rate and its denominator ("scored", RATE_RULE), and the
run exits 1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from collections import Counter
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Why a task falls short, as found by replaying its failed placements (suite -> task id -> text): attached to the
# task's below_bar entry; a task below its bar without one says "not diagnosed".
DIAGNOSES = Path(__file__).resolve().parent / "expert_diagnoses.json"
# The success every task of a suite must reach on fresh placements.
BARS = {"libero_spatial": 0.9, "libero_object": 0.9, "libero_goal": 0.9, "libero_10": 0.8}
PLACEMENT_SEED_MIN = 1 << 20  # stored-state resets seed with (--seed + index), small; fresh ones never go this low
PLACEMENT_RULE = (
    "placement_seed = 2**20 + SeedSequence([seed, task_id, index, 0xBE4C]).generate_state(1)[0] % (2**31 - 2**20)"
)


def placement_seed(seed: int, task_id: int, index: int) -> int:
    """The fresh placement of episode `index` of a task: PLACEMENT_RULE. At least 2**20, so never the seed of a
    stored-state reset (LiberoEnv seeds those with seed + index), and drawn from its own stream (salt 0xBE4C),
    not generate's, so the bench does not rerun the placements demonstrations were recorded from."""
    import numpy as np

    state = int(np.random.SeedSequence([seed, task_id, index, 0xBE4C]).generate_state(1)[0])
    return PLACEMENT_SEED_MIN + state % ((1 << 31) - PLACEMENT_SEED_MIN)


def ids_or_all(text: str | None, n: int, flag: str, what: str) -> list[int]:
    """The ids `text` names ('0,3', '0-9', '0-2,5': the package's one id parser), or all n when it is None."""
    from world_modality.ids import parse_ids

    return list(range(n)) if text is None else parse_ids(text, flag, what)


def run_task(job: tuple) -> dict:
    """Worker: build one env for a task and run the expert from each requested start."""
    suite, task_id, init_text, seed, steps_per_frame, placements = job
    from world_modality.sim.env import LiberoEnv
    from world_modality.sim.record import expert_episode

    t0 = time.time()
    with LiberoEnv(suite, task_id, seed=seed) as env:
        ids = ids_or_all(init_text, env.num_init_states, "--init-states", "initial-state ids")
        results = []
        for i in ids:
            fresh = placement_seed(seed, task_id, i) if placements == "fresh" else None
            try:
                r = expert_episode(env, i, control_steps_per_frame=steps_per_frame, placement_seed=fresh)
            except Exception as exc:  # noqa: BLE001 - the expert cannot solve it: counted apart, the run exits 1
                r = {"success": False, "steps": 0, "frames": 0, "phase": f"error: {exc!r}", "error": True}
            r["placement_seed"] = fresh
            results.append(r)
        instruction = env.task
    return task_row(task_id, instruction, ids, results, round(time.time() - t0, 1))


def task_row(task_id: int, instruction: str, ids: list[int], results: list[dict], seconds: float) -> dict:
    """One task's figures from its episodes' results. An episode that ended in an error says nothing about the
    expert: it is counted under `errors` and `error_init_states`, and left out of `scored` (the rate's denominator),
    of `success_rate` (None when every episode errored) and of the failures."""
    ok = sum(bool(r["success"]) for r in results)
    errored = [i for i, r in zip(ids, results) if r.get("error")]
    failed = [(i, r) for i, r in zip(ids, results) if not r["success"] and not r.get("error")]
    scored = len(ids) - len(errored)
    return {
        "task_id": task_id,
        "instruction": instruction,
        "successes": ok,
        "episodes": len(ids),
        "errors": len(errored),
        "scored": scored,
        "success_rate": ok / scored if scored else None,
        "plan": next((r["plan"] for r in results if "plan" in r), None),
        "failed_init_states": [i for i, _ in failed],
        "error_init_states": errored,
        "failed_phases": {str(i): r["phase"] for i, r in failed},
        # The plan step each failed episode ended in (its index; len(plan) once every step was done) and the
        # phase, with the placement seed that reproduces it (None: a stored initial state).
        "failed_episodes": {
            str(i): {"plan_step": r.get("plan_step"), "phase": r["phase"], "placement_seed": r["placement_seed"]}
            for i, r in failed
        },
        "errored_episodes": {
            str(i): {"phase": r["phase"], "placement_seed": r["placement_seed"]}
            for i, r in zip(ids, results)
            if r.get("error")
        },
        "mean_frames_success": (sum(r["frames"] for r in results if r["success"]) / ok) if ok else None,
        "seconds": seconds,
    }


RATE_RULE = "success_rate = successes / scored; scored = episodes - errors (errored episodes are left out)"


def scored(row: dict) -> int:
    """A row's episodes that count in its rate (rows written before `scored` was recorded: episodes - errors)."""
    return row.get("scored", row["episodes"] - row.get("errors", 0))


def suite_figures(rows: list[dict]) -> dict:
    """The suite's totals over task rows: successes over the scored episodes, errors counted apart."""
    ok, n = sum(r["successes"] for r in rows), sum(scored(r) for r in rows)
    rates = [r["success_rate"] for r in rows if r["success_rate"] is not None]
    return {
        "successes": ok,
        "episodes": sum(r["episodes"] for r in rows),
        "errors": sum(r.get("errors", 0) for r in rows),
        "scored": n,
        "success_rate": ok / n if n else None,
        "rate_rule": RATE_RULE,
        "min_task_success_rate": min(rates, default=None),
    }


def check_same_starts(old: dict, args) -> None:
    """--update is refused when the results file measured other starts than this run would."""
    same = {
        "suite": args.suite,
        "placements": args.placements,
        "init_states": args.init_states or "0-49",
        "seed": args.seed,
    }
    same["control_steps_per_frame"] = args.control_steps_per_frame
    differ = {k: (old.get(k), v) for k, v in same.items() if old.get(k) != v}
    if differ:
        raise SystemExit(f"--update: the results file measured other starts ({differ}: file, now); rerun all tasks.")


def merge_rows(old: dict, rows: list[dict]) -> list[dict]:
    """--update: the existing file's rows with those of the re-measured tasks replaced."""
    merged = {r["task_id"]: {**r, "commit": r.get("commit", "not recorded")} for r in old["tasks"]}
    merged.update({r["task_id"]: r for r in rows})
    return [merged[t] for t in sorted(merged)]


def step_at(plan: list[str] | None, index: int | None) -> str:
    """'1: place akita_black_bowl_1 on plate_1'; 'after the plan' once every step was done; '?' when unknown."""
    if plan is None or index is None:
        return "?"
    return f"{index}: {plan[index]}" if index < len(plan) else "after the plan (its goal did not hold)"


def attach_reasons(summary: dict) -> dict:
    """Each below-bar task of `summary` gets its `reason` from DIAGNOSES (or 'not diagnosed')."""
    known = json.loads(DIAGNOSES.read_text()).get(summary["suite"], {}) if DIAGNOSES.exists() else {}
    for entry in summary["below_bar"]:
        entry["reason"] = known.get(str(entry["task_id"]), "not diagnosed")
    return summary


def percent(rate: float | None) -> str:
    return "   n/a" if rate is None else f"{100 * rate:6.1f}%"


def format_row(r: dict) -> str:
    """k/n over the scored episodes; errors, left out of the rate, named after the failures."""
    errors = r.get("errors", 0)
    return (
        f"{r['task_id']:>4d}  {r['successes']:>3d}/{scored(r):<3d} {percent(r['success_rate'])}  "
        f"{r['seconds']:7.1f}s  failed={r['failed_init_states']}"
        + (f" errors={r.get('error_init_states', errors)} (not in the rate)" if errors else "")
        + f"  {r['instruction']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--tasks", default=None, help="e.g. 0,1,2 or 0-9 (default: all)")
    ap.add_argument(
        "--init-states",
        default=None,
        help="episode indices, e.g. 0-9 (default: 0-49): stored initial states, or the index fed to placement_seed",
    )
    ap.add_argument(
        "--placements",
        choices=("fresh", "stored"),
        default="fresh",
        help="fresh: LIBERO's placement sampler seeded by placement_seed(seed, task, index) (default); "
        "stored: the benchmark's stored initial states",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--control-steps-per-frame", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/expert_success_<suite>.json)")
    ap.add_argument(
        "--update",
        action="store_true",
        help="re-measure only --tasks and replace their rows in the existing results file (same starts)",
    )
    ap.add_argument(
        "--reasons-only",
        action="store_true",
        help=f"run nothing: attach the reasons of {DIAGNOSES.name} to the below-bar tasks of the results file",
    )
    args = ap.parse_args()
    out = Path(args.out) if args.out else RESULTS_DIR / f"expert_success_{args.suite}.json"
    if args.reasons_only:
        if not out.exists():
            raise SystemExit(f"{out} does not exist: run the benchmark for {args.suite} first.")
        summary = attach_reasons(json.loads(out.read_text()))
        out.write_text(json.dumps(summary, indent=1) + "\n")
        for entry in summary["below_bar"]:
            print(f"task {entry['task_id']}: {100 * entry['success_rate']:.0f}%  {entry['reason']}")
        return

    old = None
    if args.update:
        if not out.exists():
            raise SystemExit(f"--update: {out} does not exist; run the benchmark without --update first.")
        old = json.loads(out.read_text())
        check_same_starts(old, args)
    from world_modality.sim.suites import base_suite, num_tasks

    n_tasks = num_tasks(args.suite)
    task_ids = ids_or_all(args.tasks, n_tasks, "--tasks", "task ids")
    jobs = [
        (args.suite, t, args.init_states, args.seed, args.control_steps_per_frame, args.placements) for t in task_ids
    ]
    t0 = time.time()
    rows = []
    print(
        f"{args.suite}: tasks {task_ids}, {args.placements} placements {args.init_states or '0-49'}, "
        f"{args.workers} workers, {args.control_steps_per_frame} control steps per frame",
        flush=True,
    )
    if args.workers <= 1:
        for job in jobs:
            rows.append(run_task(job))
            print(format_row(rows[-1]), flush=True)
    else:
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            for r in pool.imap_unordered(run_task, jobs):
                rows.append(r)
                print(format_row(r), flush=True)
    from world_modality.provenance import code_commit

    commit = code_commit(("world_modality", "bench/expert_success.py"))
    for r in rows:
        r["commit"] = commit
    rows.sort(key=lambda r: r["task_id"])
    if old is not None:
        rows = merge_rows(old, rows)
    figures = suite_figures(rows)
    print(f"\n{'task':>4}  {'k/n':<7} {'%':>7}  {'seconds':>8}  failed init states / instruction")
    for r in rows:
        print(format_row(r))
    errors = f", {figures['errors']} error(s) not in the rate" if figures["errors"] else ""
    print(
        f"{args.suite}: {figures['successes']}/{figures['scored']} = {percent(figures['success_rate']).strip()}"
        f"{errors}  ({time.time() - t0:.0f}s wall)"
    )
    bar = BARS.get(base_suite(args.suite))
    below = [
        {
            "task_id": r["task_id"],
            "success_rate": r["success_rate"],
            "failure_phases": dict(Counter(r["failed_phases"].values()).most_common()),
            # Where the failures ended: the plan's step (in words) and how many episodes ended there.
            "failed_at_step": dict(
                Counter(step_at(r["plan"], e["plan_step"]) for e in r["failed_episodes"].values()).most_common()
            ),
        }
        for r in rows
        if bar is not None and r["success_rate"] is not None and r["success_rate"] < bar
    ]
    summary = {
        "suite": args.suite,
        "placements": args.placements,
        "placement_rule": PLACEMENT_RULE if args.placements == "fresh" else "the benchmark's stored initial states",
        "init_states": args.init_states or "0-49",
        "seed": args.seed,
        "control_steps_per_frame": args.control_steps_per_frame,
        "workers": args.workers,
        **figures,
        "bar": bar,
        "below_bar": below,
        "wall_seconds": round(time.time() - t0, 1),  # of this run (with --update: of the re-measured tasks)
        "commits": sorted({r["commit"] for r in rows}),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "tasks": rows,
    }
    attach_reasons(summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)
    if summary["errors"]:
        raise SystemExit(f"{summary['errors']} episode(s) ended in an error (phase 'error: ...' in {out}).")


if __name__ == "__main__":
    main()
