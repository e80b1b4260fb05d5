"""Training cost of the world modality: samples per second and peak memory (RSS), E0 vs E2 on the same
data, batch size and seed. Each run is its own process (so peak RSS is its own), arms alternating.

    .venv/bin/python bench/training.py            # fixture 16 episodes x 24 frames, 2 epochs, 2 runs per arm
    .venv/bin/python bench/training.py --quick    # 4 x 16, 1 epoch, 1 run per arm
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import emit, fixture_dataset, median, peak_rss_mb, tiny_config

ARMS = ("E0", "E2")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child(args) -> None:
    """One training run; prints its last epoch's seconds and its memory as JSON."""
    import torch  # noqa: F401 - imported before the baseline RSS so the figure is the run's own

    from world_modality.train import train

    cfg = tiny_config(Path(args.dataset), Path(args.child_out), args.arm, max_epochs=args.epochs,
                      batch_size=args.batch_size, seed=0, num_threads=args.threads)
    before = rss_mb()
    train(cfg, progress=False)
    epochs = [json.loads(line) for line in (Path(args.child_out) / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"epoch_seconds": [e["seconds"] for e in epochs], "steps": epochs[-1]["step"],
                      "rss_before_train_mb": before, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--length", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=2, help="the last epoch is timed (the first carries warm-up)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2, help="runs per arm, alternating E0, E2, E0, ...")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="4 episodes x 16 frames, 1 epoch, 1 run per arm")
    ap.add_argument("--out", default=None)
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_out:
        return child(args)
    if args.quick:
        args.episodes, args.length, args.epochs, args.runs = 4, 16, 1, 1
    from world_modality.data.lerobot import load_dataset
    from world_modality.data.split import split_episodes
    from world_modality.pipeline import prepare_data
    from world_modality.policy.factory import world_encoder_from_config

    runs: dict[str, list[dict]] = {a: [] for a in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        data = fixture_dataset(Path(tmp) / "fixture", n_episodes=args.episodes, length=args.length)
        cfg = tiny_config(data, Path(tmp) / "x", "E2")
        prepare_data(cfg, world_encoder_from_config(cfg), progress=False)  # latent cache built here, not timed
        ds = load_dataset(data)
        n_train = len(ds.rows_of(split_episodes(ds, cfg.data.val_fraction)[0]))
        for i in range(args.runs):
            for arm in ARMS:
                cmd = [sys.executable, __file__, "--arm", arm, "--dataset", str(data), "--child-out", f"{tmp}/{arm}-{i}",
                       "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"{arm} run failed:\n{proc.stderr[-3000:]}")
                runs[arm].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    sps = {a: median([n_train / r["epoch_seconds"][-1] for r in runs[a]]) for a in ARMS}
    peak = {a: median([r["peak_rss_mb"] for r in runs[a]]) for a in ARMS}
    own = {a: median([r["peak_rss_mb"] - r["rss_before_train_mb"] for r in runs[a]]) for a in ARMS}
    table = [f"training: {n_train} training samples ({args.episodes} episodes x {args.length}, 128-px images), batch "
             f"{args.batch_size}, seed 0, {args.threads} thread(s), last of {args.epochs} epoch(s) timed, {args.runs} run(s) per arm",
             f"{'arm':<4} {'samples/s':>10} {'peak RSS MB':>12} {'peak - RSS before train()':>26}",
             *(f"{a:<4} {sps[a]:10.1f} {peak[a]:12.0f} {own[a]:26.0f}" for a in ARMS),
             f"E2/E0: speed {sps['E2'] / sps['E0']:.2f}x, peak RSS {peak['E2'] / peak['E0']:.2f}x "
             f"(E2 carries the world encoder, Prophet and cross-attention; its latents come from the cache)"]
    figures = {
        "samples_per_s_e0": round(sps["E0"], 1), "samples_per_s_e2": round(sps["E2"], 1),
        "peak_rss_mb_e0": round(peak["E0"], 1), "peak_rss_mb_e2": round(peak["E2"], 1),
        "train_rss_growth_mb_e0": round(own["E0"], 1), "train_rss_growth_mb_e2": round(own["E2"], 1),
        "ratio_e2_vs_e0_samples_per_s": round(sps["E2"] / sps["E0"], 3),
        "ratio_e2_vs_e0_peak_rss": round(peak["E2"] / peak["E0"], 3),
        "train_samples": n_train, "batch_size": args.batch_size, "epochs": args.epochs, "runs_per_arm": args.runs,
        "threads": args.threads, "rss_method": "getrusage(RUSAGE_SELF).ru_maxrss in each run's own process; "
                                               "growth = peak minus VmRSS just before train()",
    }
    emit("training", table, figures, {"runs": runs}, args.out)


if __name__ == "__main__":
    main()
