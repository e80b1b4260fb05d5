"""`make demo`: the main job on the embedded default (CPU, no downloads).

Generates scripted-expert demonstrations in LIBERO (cached), encodes world latents, trains E0 and
E2 with the same budget and seed, evaluates both closed-loop on the same initial states, prints
the paired comparison and writes the report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .jsonl import read_jsonl


@dataclass(frozen=True)
class DemoBudget:
    suite: str = "libero_spatial"
    tasks: tuple[int, ...] = (0, 1)
    episodes_per_task: int = 20  # demonstrations
    # Closed-loop episodes per task (stored initial states 0..n-1): fewer than the public protocol's 50,
    # to fit minutes on 2 cores; `world-modality eval` defaults to all 50.
    eval_episodes: int = 10
    max_epochs: int = 20
    batch_size: int = 16
    image_size: int = 128
    lr_schedule: str = "cosine"  # the CPU recipe's (docs/RESULTS.md, "CPU recipe"), on fewer tasks and demonstrations
    workers: int = 2


FULL = DemoBudget()
QUICK = DemoBudget(episodes_per_task=8, eval_episodes=4, max_epochs=6)


def _stage(msg: str, t0: float) -> None:
    print(f"\n[demo {(time.time() - t0) / 60:5.1f} min] {msg}", flush=True)


def _train_and_score(cfg) -> str:
    """Child process: train one experiment (its console output to the run's train.log), then score it offline."""
    import contextlib

    from .analysis.offline import evaluate_offline, write_result
    from .train import train

    run = Path(cfg.train.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    with (run / "train.log").open("a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        train(cfg, progress=False)
        write_result(evaluate_offline(run), run / "eval_offline_val.json")
    return str(run)


def _epochs_logged(run: Path) -> list[dict]:
    records, _ = read_jsonl(run / "metrics.jsonl")  # skips the line a training process is writing right now
    return [r for r in records if r.get("kind") == "train"]


def _train_side_by_side(cfgs: dict) -> dict[str, Path]:
    """Train each config in its own process (training takes one core each: see train.py), showing
    one progress bar over all their epochs and each epoch's losses as it ends."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    runs = {name: Path(c.train.output_dir) for name, c in cfgs.items()}
    seen = {name: len(_epochs_logged(run)) for name, run in runs.items()}
    total = sum(c.train.max_epochs for c in cfgs.values())
    pool = ProcessPoolExecutor(max_workers=len(cfgs), mp_context=mp.get_context("spawn"))
    try:
        with tqdm(total=total, initial=min(total, sum(seen.values())), desc="epochs (all runs)", unit="epoch") as bar:
            _follow(pool, cfgs, runs, seen, bar)
    except BaseException:
        # A failed run (or Ctrl-C) stops the demo now, not after the other run's remaining epochs;
        # both runs resume from their checkpoints on the next `make demo`.
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return runs


def _follow(pool, cfgs: dict, runs: dict[str, Path], seen: dict[str, int], bar) -> None:
    from concurrent.futures import FIRST_EXCEPTION, wait

    futures = {pool.submit(_train_and_score, c): name for name, c in cfgs.items()}
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=2.0, return_when=FIRST_EXCEPTION)
        for f in done:
            f.result()  # a failed run stops the demo with its own error
        for name, run in runs.items():
            records = _epochs_logged(run)
            for r in records[seen[name] :]:
                losses = " ".join(f"{k}={v:.4f}" for k, v in r.items() if k.endswith("loss") or k == "gate_tanh")
                bar.write(f"[{name}] epoch {r['epoch']}/{cfgs[name].train.max_epochs} {losses} ({r['seconds']:.0f} s)")
                bar.update(1)
            seen[name] = len(records)


def run_demo(quick: bool = False, out: str | Path = "runs/demo") -> int:
    from .analysis.report import write_report
    from .config import build_config
    from .evaluate.closed_loop import EvalSettings, evaluate
    from .sim.generate import generate

    b = QUICK if quick else FULL
    out = Path(out) / ("quick" if quick else "full")
    t0 = time.time()
    tasks = ",".join(map(str, b.tasks))
    name = f"{b.suite}-t{tasks.replace(',', '-')}-n{b.episodes_per_task}-{b.image_size}px-fresh"
    data = Path(out).parent / "data" / name
    _stage(f"1/5 demonstrations: {b.episodes_per_task} per task, {b.suite} tasks {tasks} -> {data}", t0)
    generate(b.suite, b.tasks, b.episodes_per_task, data, image_size=b.image_size, workers=b.workers, seed=0)

    cfgs = {
        preset: build_config(
            {
                "dataset": str(data),
                "image_size": b.image_size,
                "max_epochs": b.max_epochs,
                "batch_size": b.batch_size,
                "lr_schedule": b.lr_schedule,
                "seed": 0,
                "output_dir": str(out / preset.lower()),
            },
            preset=preset,
        )
        for preset in ("E0", "E2")
    }
    _stage(
        f"2-3/5 train E0 and E2 side by side, one core each ({b.max_epochs} epochs, seed 0; "
        f"E2 encodes its world latents first; logs in each run's train.log)",
        t0,
    )
    runs = _train_side_by_side(cfgs)
    _stage(
        f"4/5 closed-loop evaluation: {b.eval_episodes} of the 50 stored initial states x {len(b.tasks)} tasks "
        "(the public protocol uses all 50), the same for E0 and E2, held out from the demonstrations",
        t0,
    )
    results = {
        preset: evaluate(
            EvalSettings(
                checkpoint=str(run),
                suite=b.suite,
                tasks=b.tasks,
                n_episodes=b.eval_episodes,
                workers=b.workers,
                video=1,
            )
        )
        for preset, run in runs.items()
    }
    errors = {preset: len(r.errors) for preset, r in results.items() if r.errors}

    _stage("5/5 report", t0)
    report = write_report(list(runs.values()), out / "report", compare=("E0", "E2"))
    lines = []
    for name, r in report["experiments"].items():
        lo, hi = r["ci"]
        lines.append(
            f"  {name:<18} {r['k']:>3}/{r['n']:<3} = {100 * r['rate']:5.1f}%  "
            f"(95% Wilson {100 * lo:.1f}-{100 * hi:.1f})"
        )
    p = report.get("paired")
    if p:
        lo, hi = p["diff_ci"]
        same = not p.get("protocol_note") and not p.get("n_refused")
        starts = "identical initial states" if same else "initial states (protocols not all matched: see the report)"
        lines.append(
            f"  paired E2 - E0 over {p['n_pairs']} {starts}: {100 * p['diff']:+.1f} pts "
            f"(95% CI {100 * lo:+.1f} to {100 * hi:+.1f}); E2-only successes {p['b_only']}, "
            f"E0-only {p['a_only']}; {p['test']} p = {p['p']:.3g}"
        )
    from .evaluate.overlap import describe

    overlap = {preset: r.overlap for preset, r in results.items()}
    lines += [f"  {preset}: {describe(o)}" for preset, o in overlap.items()]
    lines.append("  errors (not counted in any rate): " + (", ".join(f"{k} {v}" for k, v in errors.items()) or "none"))
    minutes = (time.time() - t0) / 60
    summary = "\n".join(lines)
    print(
        f"\n[demo] closed-loop success on {b.suite} tasks {tasks}, {b.eval_episodes} held-out initial states "
        f"per task:\n{summary}\n[demo] report: {report['report_html']}\n[demo] total {minutes:.1f} min"
    )
    (out / "summary.json").write_text(
        json.dumps(
            {
                "experiments": report["experiments"],
                "paired": p,
                "overlap": overlap,
                "errors": errors,
                "minutes": round(minutes, 2),
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    if errors:
        print(
            f"[demo] ERROR: {sum(errors.values())} closed-loop episode(s) ended in an error ({errors}); "
            "run `make demo` again to retry them."
        )
        return 1
    return 0
