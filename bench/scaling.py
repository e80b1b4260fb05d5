"""How the pipeline's stages grow with the data: demo generation, latent encoding, training (E2) and
closed-loop evaluation, over three sizes (demos per task, and as many evaluation episodes per task).
Prints a table, writes bench/results/scaling.json and a log-log plot bench/results/scaling.png.

    .venv/bin/python bench/scaling.py                   # libero_spatial task 0, sizes 1,2,4
    .venv/bin/python bench/scaling.py --quick           # sizes 1,2, 16-step evaluation episodes
    .venv/bin/python bench/scaling.py --tasks 0,1 --sizes 2,4,8 --eval-steps 0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, emit, tiny_config

STAGES = ("generate", "encode", "train", "evaluate")
PLOT_REFERENCE = (
    "the dashed 'linear in size' line in the plot is drawn, not measured: seconds.generate[0] * size / sizes[0]"
)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_size(n: int, args, tmp: Path) -> dict:
    from world_modality.evaluate.closed_loop import EvalSettings, evaluate
    from world_modality.pipeline import prepare_data
    from world_modality.policy.factory import world_encoder_from_config
    from world_modality.sim.generate import generate
    from world_modality.train import train

    data, run = tmp / f"data{n}", tmp / f"e2-{n}"
    tasks = [int(t) for t in args.tasks.split(",")]
    row = {"episodes_per_task": n}
    row["generate"] = timed(
        lambda: generate(args.suite, tasks, n, data, image_size=128, workers=args.workers, seed=0, progress=False)
    )
    cfg = tiny_config(data, run, "E2", max_epochs=args.epochs)
    prepared = {}
    row["encode"] = timed(
        lambda: prepared.setdefault("d", prepare_data(cfg, world_encoder_from_config(cfg), progress=False))
    )
    row["frames"] = len(prepared["d"].dataset)
    row["train"] = timed(lambda: prepared.setdefault("ckpt", train(cfg, progress=False)))
    row["evaluate"] = timed(
        lambda: evaluate(
            EvalSettings(
                checkpoint=str(prepared["ckpt"]),
                suite=args.suite,
                tasks=tuple(tasks),
                n_episodes=n,
                workers=args.workers,
                max_steps=args.eval_steps or None,
                out=str(tmp / f"eval{n}"),
            ),
            progress=False,
        )
    )
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["episodes_per_task"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s in STAGES:
        ax.plot(x, [r[s] for r in rows], marker="o", label=s)
    ax.plot(x, [rows[0]["generate"] * v / x[0] for v in x], "k--", alpha=0.4, label="linear in size")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("demos per task (= evaluation episodes per task)")
    ax.set_ylabel("wall seconds")
    ax.set_title("pipeline stages vs data size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--tasks", default="0")
    ap.add_argument("--sizes", default="1,2,4", help="demos (and evaluation episodes) per task")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--eval-steps", type=int, default=40, help="control steps per evaluation episode (0: the suite's limit)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="sizes 1,2 and 16-step evaluation episodes")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=str(RESULTS_DIR / "scaling.png"))
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.eval_steps = "1,2", 16
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    # One-time imports (transformers, the encoder class, the video decoder) would otherwise land on
    # the first size's encode.
    import av  # noqa: F401

    from world_modality.policy.factory import world_encoder_from_config
    from world_modality.train import train  # noqa: F401

    world_encoder_from_config(tiny_config("unused", "unused", "E2"))
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            rows.append(run_size(n, args, Path(tmp)))
            print(f"[scaling] size {n}: " + ", ".join(f"{s} {rows[-1][s]:.1f}s" for s in STAGES), flush=True)
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot(rows, Path(args.plot))
    first, last = rows[0], rows[-1]
    size_ratio = last["episodes_per_task"] / first["episodes_per_task"]
    table = [
        f"scaling: {args.suite} tasks {args.tasks}, E2 {args.epochs} epoch(s), evaluation "
        f"{args.eval_steps or 'suite-limit'} steps, {args.workers} workers",
        f"{'demos/task':>10} {'frames':>7} " + " ".join(f"{s + ' s':>11}" for s in STAGES),
        *(f"{r['episodes_per_task']:>10} {r['frames']:>7} " + " ".join(f"{r[s]:11.1f}" for s in STAGES) for r in rows),
        f"growth {first['episodes_per_task']} -> {last['episodes_per_task']} demos/task ({size_ratio:.0f}x data): "
        + ", ".join(f"{s} {last[s] / first[s]:.2f}x" for s in STAGES),
        f"plot: {args.plot}",
    ]
    figures = {
        "sizes": sizes,
        "size_ratio": size_ratio,
        **{f"growth_ratio_{s}": round(last[s] / first[s], 2) for s in STAGES},
        "seconds": {s: [round(r[s], 1) for r in rows] for s in STAGES},
        "frames": [r["frames"] for r in rows],
        "suite": args.suite,
        "tasks": args.tasks,
        "eval_steps": args.eval_steps,
        "workers": args.workers,
        "plot_reference_line": PLOT_REFERENCE,
        "plot": str(Path(args.plot).relative_to(RESULTS_DIR.parent.parent))
        if Path(args.plot).is_relative_to(RESULTS_DIR.parent.parent)
        else args.plot,
    }
    emit("scaling", table, figures, out=args.out)


if __name__ == "__main__":
    main()
