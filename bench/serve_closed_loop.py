"""Closed-loop part of bench/serve.py: LIBERO episodes per hour with 1, 2 and 4 simulator workers, each loading its
own policy copy (`evaluate()`, as `world-modality eval`) vs all asking one `world-modality serve` process
(`evaluate()` with `policy_server`, as `eval --policy_server`); per-episode agreement and the server's batch sizes."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from _common import median

ENV_SEED = 7  # EvalSettings' default, as in the public LIBERO scripts
WORKERS = (1, 2, 4)
OUTCOME_KEYS = ("task_id", "init_index", "success", "steps", "frames", "failure")


def server_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as answer:
        return json.loads(answer.read())


def run_eval(ckpt: Path, out: Path, workers: int, n: int, suite: str, task: int, max_steps: int, server=None):
    """One evaluation through the project's entry point; -> (episodes sorted by initial state, wall seconds)."""
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
            out=str(out),
            device="cpu",
            video=1,  # the first episode filmed in every setting: its frames are compared byte for byte
            policy_server=server,
        ),
        progress=False,
    )
    wall = time.perf_counter() - t0
    if run.errors:
        raise RuntimeError(f"{len(run.errors)} episode(s) ended in an error: {run.errors[0]['error']}")
    return sorted(read_episodes(run.path), key=lambda r: r["init_index"]), wall


def row(records: list[dict], wall: float, workers: int) -> dict:
    startup = [r["timing"]["startup_s"] for r in records if "startup_s" in r.get("timing", {})]
    return {
        "workers": workers,
        "episodes": len(records),
        "wall_s": round(wall, 2),
        "episodes_per_hour": round(3600 * len(records) / wall, 1),
        "per_episode_median_s": round(median([r["seconds"] for r in records]), 3),
        "policy_median_s_per_episode": round(median([r["timing"]["policy_s"] for r in records]), 3),
        "worker_startup_median_s": round(median(startup), 2) if startup else None,
        "successes": sum(bool(r["success"]) for r in records),
    }


def same_episodes(a: list[dict], b: list[dict], dir_a: Path, dir_b: Path) -> dict:
    """Outcome agreement episode by episode, and whether the filmed episode's video is the same bytes."""
    agree = [{k: x[k] for k in OUTCOME_KEYS} == {k: y[k] for k in OUTCOME_KEYS} for x, y in zip(a, b, strict=True)]
    videos = [(dir_a / x["video"], dir_b / y["video"]) for x, y in zip(a, b) if x.get("video") and y.get("video")]
    return {
        "outcome_agreement_rate": round(sum(agree) / len(agree), 3),
        "video_bytes_identical": bool(videos) and all(p.read_bytes() == q.read_bytes() for p, q in videos),
    }


def batch_row(before: dict, after: dict) -> dict:
    hist = {
        k: after["batch_sizes"].get(k, 0) - before["batch_sizes"].get(k, 0)
        for k in after["batch_sizes"]
        if after["batch_sizes"].get(k, 0) != before["batch_sizes"].get(k, 0)
    }
    batches = sum(hist.values())
    requests = sum(int(k) * v for k, v in hist.items())
    return {
        "requests": requests,
        "batches": batches,
        "mean_batch_size": round(requests / batches, 3) if batches else None,
        "batch_size_histogram": hist,
    }


def closed_loop(ckpt: Path, tmp: Path, port: int, n: int, suite: str, task: int, max_steps: int):
    """Each worker count: local, then served (interleaved, so load drifts fall on both). -> (table lines, figures)."""
    from eval_throughput import warm_simulator  # robosuite's first-use compile, kept out of every timed arm

    warm = warm_simulator(suite, task)
    rows, runs = {}, {}
    for w in WORKERS:
        local_dir, served_dir = tmp / f"local_{w}", tmp / f"served_{w}"
        runs[f"local_{w}"] = run_eval(ckpt, local_dir, w, n, suite, task, max_steps)
        rows[f"local_{w}_workers"] = row(*runs[f"local_{w}"], w)
        before = server_stats(port)
        runs[f"served_{w}"] = run_eval(ckpt, served_dir, w, n, suite, task, max_steps, f"127.0.0.1:{port}")
        rows[f"served_{w}_workers"] = {
            **row(*runs[f"served_{w}"], w),
            **batch_row(before, server_stats(port)),
            **same_episodes(runs[f"local_{w}"][0], runs[f"served_{w}"][0], local_dir, served_dir),
        }
    ref = runs["local_1"][0]
    all_agree = all(
        [{k: r[k] for k in OUTCOME_KEYS} for r in recs] == [{k: r[k] for k in OUTCOME_KEYS} for r in ref]
        for recs, _ in runs.values()
    )
    table = [
        f"closed loop, {suite} task {task}, {n} episodes of at most {max_steps} steps per setting (tiny E2, CPU)",
        f"{'setting':<18} {'ep/hour':>8} {'wall s':>7} {'median s/ep':>11} {'policy s/ep':>11} "
        f"{'agree':>6} {'mean batch':>10}  batch sizes",
        *(
            f"{k:<18} {r['episodes_per_hour']:8.1f} {r['wall_s']:7.1f} {r['per_episode_median_s']:11.2f} "
            f"{r['policy_median_s_per_episode']:11.2f} {r.get('outcome_agreement_rate', ''):>6} "
            f"{r.get('mean_batch_size') or '':>10}  {r.get('batch_size_histogram', '')}"
            for k, r in rows.items()
        ),
    ]
    successes = [r["successes"] for r in rows.values()]
    figures = {
        **rows,
        "outcomes_identical_across_all_settings": all_agree,
        "successes_per_setting": successes,
        "suite": suite,
        "task": task,
        "episodes_per_setting": n,
        "max_steps": max_steps,
        "simulator_warmup_s_untimed": round(warm, 1),
        "definitions": {
            "episodes_per_hour": "episodes / evaluate()'s wall time incl. worker start (the server, started once "
            "before, not counted)",
            "per_episode_median_s": "median of the episodes' own seconds (reset to end, in the worker)",
            "outcome_agreement_rate": "served vs local with the same worker count: same success, control steps, "
            "frames and failure per episode",
            "video_bytes_identical": "the first episode's video (every policy step's camera frames) byte for byte",
            "batch_size_histogram": "batches the server ran during that setting, by requests per batch (GET /stats)",
        },
    }
    return table, figures
