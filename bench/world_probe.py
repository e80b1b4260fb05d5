"""What the world latent knows: R² of the ridge probe (world_modality/analysis/probe.py) from z_t to the objects'
positions at t, on the held-out episodes of a generated dataset, for the random tiny encoder (the embedded default),
a pretrained one (`world-modality pretrain-world --out DIR`, if given) and the env_state encoder (the simulator's
object state: the upper bound; where the installed version has no such encoder, the raw environment_state vector
is probed instead and labelled so). The ordering is measured here, not assumed.

    .venv/bin/python bench/world_probe.py DATASET [--pretrained DIR] [--out FILE]

DATASET must record observation.environment_state (`world-modality generate` writes it).
"""

from __future__ import annotations

import argparse
import time

from _common import emit

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
        "label": "env_state_raw (upper bound: the input holds the targets)" if raw else arm,
        "n_train_rows": r["n_train_rows"],
        "n_test_rows": r["n_test_rows"],
        "n_train_episodes": len(r["train_episodes"]),
        "n_test_episodes": len(r["test_episodes"]),
        "seconds": round(time.perf_counter() - t0, 2),
    }


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
    objects = list(next(iter(results.values()))["per_object_r2"])
    first = next(iter(results.values()))
    width = max(12, *(len(o) for o in objects))
    table = [
        f"world probe: ridge z_t -> object positions at t on {args.dataset}; fit on {first['n_train_episodes']} "
        f"training episodes ({first['n_train_rows']} rows), R² on {first['n_test_episodes']} held-out episodes "
        f"({first['n_test_rows']} rows); 1 = exact, 0 = their mean",
        f"{'object':<{width}} " + " ".join(f"{results[a]['label'].split(' ')[0]:>14}" for a in arms),
    ]
    for obj in objects + [None]:
        cells = [results[a]["overall_r2"] if obj is None else results[a]["per_object_r2"].get(obj) for a in arms]
        table.append(
            f"{obj or 'overall':<{width}} " + " ".join("             -" if c is None else f"{c:>+14.3f}" for c in cells)
        )
    table.append(
        "features: " + "; ".join(f"{a}: {results[a]['features']} ({results[a]['feature_dim']}-d)" for a in arms)
    )
    overall = {a: results[a]["overall_r2"] for a in arms}
    ranked = sorted((a for a in arms if overall[a] is not None), key=lambda a: -overall[a])
    table.append("ordering (measured): " + " > ".join(ranked))
    figures = {f"r2_overall_{a}": overall[a] for a in arms}
    figures["ordering_measured"] = " > ".join(ranked)
    details = {
        "dataset": args.dataset,
        "pretrained": args.pretrained,
        "encoders": results,
        "what": "R² of a ridge probe from z_t to the objects' positions at t (observation.environment_state "
        "'.pos.' entries), fit on training episodes, scored on held-out episodes",
    }
    emit("world_probe", table, figures, details, out=args.out)


if __name__ == "__main__":
    import sys

    from world_modality.errors import run_reporting_errors

    # A dataset without the environment state, a missing encoder folder: one line, exit status 2, as the CLI.
    sys.exit(run_reporting_errors("world_probe", lambda: main() or 0))
