"""What the world latent knows: R² of the ridge probe (world_modality/analysis/probe.py) from z_t to the objects'
positions at t, on the held-out episodes of a generated dataset, for the random tiny encoder (the embedded default),
a pretrained one (`world-modality pretrain-world --out DIR`, if given) and the env_state encoder (the simulator's
object state; where the installed version has no such encoder, the raw environment_state vector is probed
instead). The env_state row is an upper bound, not a finding: its input contains the targets, so its R² of 1 is
true by construction; every row of it printed or written says so. The ordering is measured here, not assumed.

    .venv/bin/python bench/world_probe.py DATASET [--pretrained DIR] [--out FILE]

DATASET must record observation.environment_state (`world-modality generate` writes it). The results file
(default bench/results/world_probe.json) is this script's output as written: the commit and command that
measured it, what the dataset and the pretrained encoder record of how they were made (their provenance and
settings), and the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import command, emit

ARMS = ("random", "pretrained", "env_state")


def probe_arm(arm: str, args) -> dict:
    from world_modality.analysis.probe import probe_dataset
    from world_modality.config import WORLD_ENCODERS, build_config
    from world_modality.policy.factory import world_encoder_from_config

    base = {
        "dataset": args.dataset,
        "image_size": args.image_size,
        "latent_suffix": args.latent_suffix,
        "frame_stride": args.frame_stride,
        "seed": args.seed,
    }
    raw = False
    if arm == "random":
        cfg = build_config({**base, "world_image_size": args.world_image_size})
    elif arm == "pretrained":
        cfg = build_config({**base, "world_encoder": "vjepa2", "world_encoder_path": args.pretrained})
    elif "env_state" in WORLD_ENCODERS:
        cfg = build_config({**base, "world_encoder": "env_state"})
    else:  # an older version without the env_state encoder: the state vector itself, one frame
        cfg, raw = build_config(base), True
    t0 = time.perf_counter()
    r = probe_dataset(cfg, None if raw else world_encoder_from_config(cfg), raw_env_state=raw, progress=args.progress)
    return {
        "features": r["features"],
        "overall_r2": r["present"]["overall"],
        "per_object_r2": r["present"]["objects"],
        "ridge_lambda": r["ridge"]["lambda"],
        "feature_dim": r["feature_dim"],
        "label": (f"{arm} (raw vector)" if raw else arm) + (f" ({r['upper_bound']})" if r["upper_bound"] else ""),
        "upper_bound": r["upper_bound"],
        "n_train_rows": r["n_train_rows"],
        "n_test_rows": r["n_test_rows"],
        "n_train_episodes": len(r["train_episodes"]),
        "n_test_episodes": len(r["test_episodes"]),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def dataset_record(root: str) -> dict:
    """How the dataset was made, as its meta/info.json records it (generator settings, provenance)."""
    info = json.loads((Path(root) / "meta" / "info.json").read_text())
    source = info.get("source") or {}
    return {
        "episodes": info.get("total_episodes"),
        "frames": info.get("total_frames"),
        **{k: source[k] for k in ("generator", "suite", "tasks", "seed", "starts") if k in source},
        "provenance": info.get("provenance"),
    }


def pretrain_record(folder: str) -> dict:
    """How the pretrained encoder was trained, as its folder records it (settings, losses)."""
    path = Path(folder)
    record: dict = {}
    if (path / "pretrain.json").exists():
        settings = json.loads((path / "pretrain.json").read_text()).get("settings") or {}
        record.update({k: settings[k] for k in ("steps", "batch_size", "lr", "seed") if k in settings})
    if (path / "losses.jsonl").exists():
        from world_modality.jsonl import read_jsonl

        rows = [r for r in read_jsonl(path / "losses.jsonl")[0] if "loss" in r]
        if rows:
            record.update(steps_logged=len(rows), loss_first=rows[0]["loss"], loss_last=rows[-1]["loss"])
    return record


def results_table(args, results: dict, arms: list[str]) -> list[str]:
    """One row per encoder (overall R², then each object's); the env_state row names its upper bound."""
    first = next(iter(results.values()))
    objects = list(first["per_object_r2"])
    cols = ["overall", *objects]
    width = max(len(c) for c in cols)
    table = [
        f"world probe: ridge z_t -> object positions at t on {args.dataset}; fit on {first['n_train_episodes']} "
        f"training episodes ({first['n_train_rows']} rows), R² on {first['n_test_episodes']} held-out episodes "
        f"({first['n_test_rows']} rows); 1 = exact, 0 = their mean",
        f"{'encoder':<12} " + " ".join(f"{c:>{width}}" for c in cols),
    ]
    for a in arms:
        r = results[a]
        cells = [r["overall_r2"], *(r["per_object_r2"].get(o) for o in objects)]
        row = f"{a:<12} " + " ".join(f"{'-':>{width}}" if c is None else f"{c:>+{width}.3f}" for c in cells)
        table.append(row + (f"  ({r['upper_bound']})" if r.get("upper_bound") else ""))
    table.append(
        "features: " + "; ".join(f"{a}: {results[a]['features']} ({results[a]['feature_dim']}-d)" for a in arms)
    )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="a generated dataset (with observation.environment_state)")
    ap.add_argument("--pretrained", default=None, help="folder written by `world-modality pretrain-world --out`")
    ap.add_argument("--image_size", type=int, default=128, help="side the frames are read at (the training one)")
    ap.add_argument("--world_image_size", type=int, default=64, help="the random tiny encoder's input side")
    ap.add_argument("--latent_suffix", default="m4")
    ap.add_argument("--frame_stride", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="seeds the ridge strength's validation split")
    ap.add_argument("--progress", action="store_true", help="show the encoding progress bars")
    ap.add_argument("--out", default=None, help="JSON output (default: bench/results/world_probe.json)")
    args = ap.parse_args()

    from world_modality.analysis.probe import require_env_state

    require_env_state(args.dataset)
    arms = [a for a in ARMS if a != "pretrained" or args.pretrained]
    results = {arm: probe_arm(arm, args) for arm in arms}
    first = next(iter(results.values()))
    table = results_table(args, results, arms)
    overall = {a: results[a]["overall_r2"] for a in arms}
    ranked = sorted((a for a in arms if overall[a] is not None), key=lambda a: -overall[a])
    table.append("ordering (measured): " + " > ".join(ranked))
    figures = {f"r2_overall_{a}": overall[a] for a in arms}
    figures["ordering_measured"] = " > ".join(ranked)
    details = {
        "what": "R² of a ridge probe from z_t to the objects' positions at t (observation.environment_state "
        "'.pos.' entries), fit on training episodes, scored on held-out episodes",
        "dataset": args.dataset,
        **{k: first[k] for k in ("n_train_rows", "n_test_rows", "n_train_episodes", "n_test_episodes")},
        "pretrained": args.pretrained,
        "encoders": results,
        "upper_bounds": {f"r2_overall_{a}": results[a]["upper_bound"] for a in arms if results[a]["upper_bound"]},
        "generation": dataset_record(args.dataset),
        "pretrain": pretrain_record(args.pretrained) if args.pretrained else None,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commands": [command()],  # the inputs' own records are under generation and pretrain
        "note": "written by bench/world_probe.py as measured (none derived)",
    }
    emit("world_probe", table, figures, details, out=args.out)


def machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores, {gpu}"


if __name__ == "__main__":
    import sys

    from world_modality.errors import run_reporting_errors

    # A dataset without the environment state, a missing encoder folder: one line, exit status 2, as the CLI.
    sys.exit(run_reporting_errors("world_probe", lambda: main() or 0))
