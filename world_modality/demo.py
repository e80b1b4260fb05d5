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


@dataclass(frozen=True)
class DemoBudget:
    suite: str = "libero_spatial"
    tasks: tuple[int, ...] = (0, 1)
    episodes_per_task: int = 20  # demonstrations
    eval_episodes: int = 10  # closed-loop episodes per task (initial states 0..n-1)
    max_epochs: int = 20
    batch_size: int = 16
    image_size: int = 128
    workers: int = 2


FULL = DemoBudget()
QUICK = DemoBudget(episodes_per_task=8, eval_episodes=4, max_epochs=6)


def _stage(msg: str, t0: float) -> None:
    print(f"\n[demo {(time.time() - t0) / 60:5.1f} min] {msg}", flush=True)


def run_demo(quick: bool = False, out: str | Path = "runs/demo") -> int:
    from .analysis.offline import evaluate_offline, write_result
    from .analysis.report import write_report
    from .config import build_config
    from .evaluate.closed_loop import EvalSettings, evaluate
    from .sim.generate import generate
    from .train import train

    b = QUICK if quick else FULL
    out = Path(out) / ("quick" if quick else "full")
    t0 = time.time()
    tasks = ",".join(map(str, b.tasks))
    data = Path(out).parent / "data" / f"{b.suite}-t{tasks.replace(',', '-')}-n{b.episodes_per_task}-{b.image_size}px"
    _stage(f"1/5 demonstrations: {b.episodes_per_task} per task, {b.suite} tasks {tasks} -> {data}", t0)
    generate(b.suite, b.tasks, b.episodes_per_task, data, image_size=b.image_size, workers=b.workers, seed=0)

    runs = {}
    for i, preset in enumerate(("E0", "E2")):
        cfg = build_config({"dataset": str(data), "image_size": b.image_size, "max_epochs": b.max_epochs,
                            "batch_size": b.batch_size, "seed": 0, "output_dir": str(out / preset.lower())}, preset=preset)
        _stage(f"{2 + i}/5 train {preset} ({b.max_epochs} epochs, seed 0; E2 encodes its world latents first)", t0)
        runs[preset] = train(cfg).parent.parent
        write_result(evaluate_offline(runs[preset]), runs[preset] / "eval_offline_val.json")

    _stage(f"4/5 closed-loop evaluation: {b.eval_episodes} initial states x {len(b.tasks)} tasks, same for E0 and E2", t0)
    for preset, run in runs.items():
        evaluate(EvalSettings(checkpoint=str(run), suite=b.suite, tasks=b.tasks, n_episodes=b.eval_episodes,
                              workers=b.workers, video=1))

    _stage("5/5 report", t0)
    report = write_report(list(runs.values()), out / "report", compare=("E0", "E2"))
    lines = []
    for name, r in report["experiments"].items():
        lo, hi = r["ci"]
        lines.append(f"  {name:<18} {r['k']:>3}/{r['n']:<3} = {100 * r['rate']:5.1f}%  (95% Wilson {100 * lo:.1f}-{100 * hi:.1f})")
    p = report.get("paired")
    if p:
        lo, hi = p["diff_ci"]
        lines.append(f"  paired E2 - E0 over {p['n_pairs']} identical initial states: {100 * p['diff']:+.1f} pts "
                     f"(95% CI {100 * lo:+.1f} to {100 * hi:+.1f}); E2-only successes {p['b_only']}, E0-only {p['a_only']}; "
                     f"exact McNemar p = {p['mcnemar_p']:.3g}")
    minutes = (time.time() - t0) / 60
    summary = "\n".join(lines)
    print(f"\n[demo] closed-loop success on {b.suite} tasks {tasks}:\n{summary}\n[demo] report: {report['report_html']}"
          f"\n[demo] total {minutes:.1f} min")
    (out / "summary.json").write_text(json.dumps({"experiments": report["experiments"], "paired": p, "minutes": round(minutes, 2)},
                                                 indent=2, default=str) + "\n")
    return 0
