"""Training cost of the world modality: samples per second and peak memory (RSS), E0 vs E2 on the same
data, batch size and seed. Each run is its own process (so peak RSS is its own), arms alternating.

    .venv/bin/python bench/training.py            # fixture 16 episodes x 24 frames, 2 epochs, 2 runs per arm
    .venv/bin/python bench/training.py --quick    # 4 x 16, 1 epoch, 1 run per arm
    .venv/bin/python bench/training.py --loader   # samples/s with 0, 1, 2 DataLoader workers, public-schema data
                                                  # -> results/training_loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from _common import emit, fixture_dataset, median, peak_rss_mb, tiny_config

ARMS = ("E0", "E2")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child(args) -> None:
    """One training run; prints its last epoch's seconds, its memory and (on CUDA) GPU utilisation as JSON."""
    import torch  # imported before the baseline RSS so the figure is the run's own

    from world_modality.train import train

    # The loader comparison keeps the defaults' other settings (validation loss off: it is not the loader's cost).
    extra = {"num_workers": args.workers, "val_loss": False, **PUBLIC} if args.workers is not None else {}
    cfg = tiny_config(
        Path(args.dataset),
        Path(args.child_out),
        args.arm,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        seed=0,
        num_threads=args.threads,
        **extra,
    )
    before = rss_mb()
    util, stop = [], threading.Event()
    if torch.cuda.is_available():

        def poll() -> None:
            while not stop.wait(0.2):
                util.append(torch.cuda.utilization())

        threading.Thread(target=poll, daemon=True).start()
    train(cfg, progress=False)
    stop.set()
    epochs = [json.loads(line) for line in (Path(args.child_out) / "metrics.jsonl").read_text().splitlines()]
    print(
        json.dumps(
            {
                "epoch_seconds": [e["seconds"] for e in epochs],
                "steps": epochs[-1]["step"],
                "rss_before_train_mb": before,
                "peak_rss_mb": peak_rss_mb(),
                "gpu_util_pct": round(sum(util) / len(util), 1) if util else None,
            }
        )
    )


def run_child(args, data: Path, out: str, arm: str, workers: int | None = None) -> dict:
    """One training run in its own process (so its peak RSS is its own); its JSON line."""
    cmd = [
        sys.executable,
        __file__,
        "--arm",
        arm,
        "--dataset",
        str(data),
        "--child-out",
        out,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    cmd += ["--workers", str(workers)] if workers is not None else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} run (workers {workers}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The public-schema fixture is short per episode: windows as its end-to-end test uses them.
PUBLIC = {"frame_stride": 2, "future_offset": 2}
LOADER_WORKERS = (0, 1, 2)


def loader_bench(args) -> None:
    """Samples/s of the training loop with 0, 1 and 2 DataLoader workers on the public-schema fixture, scaled
    up; caches built first (not timed); runs alternate between worker counts."""
    import torch

    from world_modality.data.lerobot import load_dataset
    from world_modality.data.public_fixture import make_public_fixture
    from world_modality.data.split import split_episodes
    from world_modality.pipeline import prepare_data
    from world_modality.policy.factory import world_encoder_from_config

    runs: dict[int, list[dict]] = {n: [] for n in LOADER_WORKERS}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_public_fixture(
            Path(tmp) / "libero", n_episodes=args.episodes, length=args.length, n_tasks=2, image_size=256
        )
        cfg = tiny_config(data, Path(tmp) / "x", "E2", **PUBLIC)
        prepare_data(cfg, world_encoder_from_config(cfg), progress=False)
        ds = load_dataset(data)
        n_train = len(ds.rows_of(split_episodes(ds, cfg.data.val_fraction)[0]))
        for i in range(args.runs):
            for n in LOADER_WORKERS:
                runs[n].append(run_child(args, data, f"{tmp}/w{n}-{i}", "E2", workers=n))
    sps = {n: median([n_train / r["epoch_seconds"][-1] for r in runs[n]]) for n in LOADER_WORKERS}
    gpu = {
        n: (median([r["gpu_util_pct"] for r in runs[n]]) if torch.cuda.is_available() else "not run (no GPU)")
        for n in LOADER_WORKERS
    }
    table = [
        f"training loader: {n_train} training samples (public-schema fixture, {args.episodes} episodes x "
        f"{args.length}, 256-px AV1 cameras, 128-px policy images), E2, batch {args.batch_size}, seed 0, "
        f"{args.threads} thread(s), last of {args.epochs} epoch(s) timed, {args.runs} run(s) per setting, "
        f"{os.cpu_count()} CPU(s)",
        f"{'workers':>7} {'samples/s':>10} {'vs 0':>6} {'GPU util %':>18}",
        *(f"{n:>7} {sps[n]:10.1f} {sps[n] / sps[0]:5.2f}x {gpu[n]!s:>18}" for n in LOADER_WORKERS),
    ]
    figures = {
        "command": " ".join([".venv/bin/python", "bench/training.py", *sys.argv[1:]]),
        **{f"samples_per_s_workers_{n}": round(sps[n], 1) for n in LOADER_WORKERS},
        **{f"gpu_util_pct_workers_{n}": gpu[n] for n in LOADER_WORKERS},
        "train_samples": n_train,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "runs_per_setting": args.runs,
        "threads": args.threads,
    }
    emit("training_loader", table, figures, {"runs": {str(n): r for n, r in runs.items()}}, args.out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--length", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=2, help="the last epoch is timed (the first carries warm-up)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2, help="runs per arm, alternating E0, E2, E0, ...")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="4 episodes x 16 frames, 1 epoch, 1 run per arm")
    ap.add_argument("--loader", action="store_true", help="compare 0, 1 and 2 DataLoader workers instead of E0/E2")
    ap.add_argument("--out", default=None)
    ap.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_out:
        return child(args)
    if args.quick:
        args.episodes, args.length, args.epochs, args.runs = 4, 16, 1, 1
    if args.loader:
        return loader_bench(args)
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
                runs[arm].append(run_child(args, data, f"{tmp}/{arm}-{i}", arm))
    sps = {a: median([n_train / r["epoch_seconds"][-1] for r in runs[a]]) for a in ARMS}
    peak = {a: median([r["peak_rss_mb"] for r in runs[a]]) for a in ARMS}
    own = {a: median([r["peak_rss_mb"] - r["rss_before_train_mb"] for r in runs[a]]) for a in ARMS}
    table = [
        f"training: {n_train} training samples ({args.episodes} episodes x {args.length}, 128-px images), batch "
        f"{args.batch_size}, seed 0, {args.threads} thread(s), last of {args.epochs} epoch(s) timed, "
        f"{args.runs} run(s) per arm",
        f"{'arm':<4} {'samples/s':>10} {'peak RSS MB':>12} {'peak - RSS before train()':>26}",
        *(f"{a:<4} {sps[a]:10.1f} {peak[a]:12.0f} {own[a]:26.0f}" for a in ARMS),
        f"E2/E0: speed {sps['E2'] / sps['E0']:.2f}x, peak RSS {peak['E2'] / peak['E0']:.2f}x "
        f"(E2 carries the world encoder, Prophet and cross-attention; its latents come from the cache)",
    ]
    figures = {
        "samples_per_s_e0": round(sps["E0"], 1),
        "samples_per_s_e2": round(sps["E2"], 1),
        "peak_rss_mb_e0": round(peak["E0"], 1),
        "peak_rss_mb_e2": round(peak["E2"], 1),
        "train_rss_growth_mb_e0": round(own["E0"], 1),
        "train_rss_growth_mb_e2": round(own["E2"], 1),
        "ratio_e2_vs_e0_samples_per_s": round(sps["E2"] / sps["E0"], 3),
        "ratio_e2_vs_e0_peak_rss": round(peak["E2"] / peak["E0"], 3),
        "train_samples": n_train,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "runs_per_arm": args.runs,
        "threads": args.threads,
        "rss_method": "getrusage(RUSAGE_SELF).ru_maxrss in each run's own process; "
        "growth = peak minus VmRSS just before train()",
    }
    emit("training", table, figures, {"runs": runs}, args.out)


if __name__ == "__main__":
    main()
