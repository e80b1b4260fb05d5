"""Policy steps per second on one core for the embedded default (tiny VJEPA2 + tiny Qwen2.5-VL,
128-px images): E2 with its time split by part, and E0 beside it, measured in one run.

    .venv/bin/python bench/inference.py            # 60 timed calls per arm
    .venv/bin/python bench/inference.py --quick    # 10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, median, tiny_checkpoint

GOAL_HZ = 20.0  # LIBERO's control rate
# Actions per second are not timed: they multiply the measured calls per second by the chunk length.
ACTION_FORMULAS = {f"actions_per_s_{arm}_derived": f"calls_per_s_{arm} * chunk_size" for arm in ("e2", "e0")}
ACTION_ASSUMPTIONS = {
    k: "counts every predicted action of a chunk; closed-loop evaluation executes "
    "actions_executed_per_call of them per call, then replans"
    for k in ACTION_FORMULAS
}


def observation(size: int, m: int, rng: np.random.Generator, task: str):
    img = lambda: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # noqa: E731
    obs = {
        "observation.images.image": img(),
        "observation.images.wrist_image": img(),
        "observation.state": rng.normal(size=8).astype(np.float32),
        "task": task,
    }
    return obs, np.stack([img() for _ in range(m)])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def part_times(runner, obs, frames) -> dict[str, float]:
    """One policy step rebuilt from the policy's own submodules, each part timed on its own.
    Mirrors PolicyRunner.act + WorldModalityPolicy.context/predict_actions (predicted memory)."""
    pol = runner.policy
    t = {}
    with torch.no_grad():
        batch, t["preprocess"] = timed(lambda: runner.inputs(obs, frames if runner.uses_world else None))
        if runner.uses_world:
            z_t, t["world_encoder"] = timed(lambda: pol.world_encoder.encode(batch.world_frames))
            batch = batch.replace(z_t=z_t, world_frames=None)
        (hidden, cond), t["backbone"] = timed(lambda: pol._backbone_pass(batch))
        end = batch.act_end
        act_h = hidden[:, end - pol.n_act : end].float()
        if runner.uses_world:
            z_pred, t["prophet"] = timed(lambda: pol.predict_future(batch.z_t, cond))

            def inject():
                tokens = pol.prophet.normalize(z_pred).reshape(pol.world_tokens, -1)  # one row per world token
                mem = pol.memory_proj(tokens).view(1, -1, act_h.shape[-1]) + pol.memory_pos
                return pol.xattn(act_h, mem)

            act_h, t["memory_xattn"] = timed(inject)
        _, t["head"] = timed(
            lambda: pol.head.sample(act_h, generator=runner.generator) * pol.action_std + pol.action_mean
        )
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=60, help="timed calls per arm")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="10 timed calls, 2 warm-up")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.calls, args.warmup = 10, 2
    torch.set_num_threads(1)
    from world_modality.inference.runner import PolicyRunner

    with tempfile.TemporaryDirectory() as tmp:
        # On the CPU whatever the machine has: this measures one core.
        runners = {p: PolicyRunner(tiny_checkpoint(Path(tmp), p), device="cpu") for p in ("E0", "E2")}
    rng = np.random.default_rng(0)
    r2 = runners["E2"]
    size, m = r2.cfg.data.image_size, r2.num_frames
    task = "move the block to the top left corner"
    full = {p: [] for p in runners}
    parts: list[dict] = []
    for i in range(args.warmup + args.calls):
        obs, frames = observation(size, m, rng, task)
        # Arms interleaved call by call, so machine load falls on both alike.
        for p, r in runners.items():
            _, dt = timed(lambda: r.act(obs, frames if r.uses_world else None))
            if i >= args.warmup:
                full[p].append(dt)
        split = part_times(r2, obs, frames)
        if i >= args.warmup:
            parts.append(split)
    med = {p: median(v) for p, v in full.items()}
    med_parts = {k: median([d[k] for d in parts]) for k in parts[0]}
    chunk, replan = r2.chunk_size, max(1, r2.chunk_size // 2)
    hz = {p: 1.0 / med[p] for p in med}
    table = [
        f"inference, 1 thread, {size}-px images, world window m={m}, chunk {chunk}: {args.calls} calls per arm",
        f"{'arm':<4} {'median ms':>10} {'calls/s':>8} {'actions/s':>10}  (actions/s derived: calls/s x chunk, "
        f"every predicted action; evaluation executes {replan} per call)",
        *(f"{p:<4} {1e3 * med[p]:10.1f} {hz[p]:8.1f} {hz[p] * chunk:10.0f}" for p in med),
        "E2 split (each part timed by its own call on the policy's submodules, median over calls):",
        *(f"  {k:<14} {1e3 * v:8.2f} ms  {100 * v / sum(med_parts.values()):5.1f}%" for k, v in med_parts.items()),
        f"  {'sum of parts':<14} {1e3 * sum(med_parts.values()):8.2f} ms (full call {1e3 * med['E2']:.2f} ms)",
    ]
    figures = {
        "calls_per_s_e2": round(hz["E2"], 2),
        "actions_per_s_e2_derived": round(hz["E2"] * chunk, 1),
        "calls_per_s_e0": round(hz["E0"], 2),
        "actions_per_s_e0_derived": round(hz["E0"] * chunk, 1),
        "derived": ACTION_FORMULAS,
        "derived_assumptions": ACTION_ASSUMPTIONS,
        "median_ms_e2": round(1e3 * med["E2"], 2),
        "median_ms_e0": round(1e3 * med["E0"], 2),
        "ratio_e2_calls_per_s_vs_20hz_goal": round(hz["E2"] / GOAL_HZ, 2),
        "ratio_e2_time_vs_e0": round(med["E2"] / med["E0"], 3),
        "split_ms_e2": {k: round(1e3 * v, 2) for k, v in med_parts.items()},
        "split_method": "each part timed by its own call on the policy's submodules (preprocess, world_encoder.encode, "
        "_backbone_pass, predict_future, memory_proj+xattn, head.sample), median per part over calls",
        "chunk_size": chunk,
        "actions_executed_per_call": replan,
        "control_steps_per_call": replan * r2.control_steps_per_frame,
        "calls": args.calls,
        "threads": torch.get_num_threads(),
        "image_size": size,
    }
    emit(
        "inference",
        table,
        figures,
        {"times_ms": {p: [round(1e3 * x, 3) for x in v] for p, v in full.items()}},
        args.out,
    )


if __name__ == "__main__":
    main()
