"""bench/real_size.py --study-slice: per arm (E2, E0), the real-size policy's optimiser step, validation, closed-loop
chunk and latent encoding timed, one study run's GPU hours derived from them; and the results file both modes write."""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

# The arms a study compares, and its evaluation (every task of a suite x its 50 stored initial states).
ARMS = ("E2", "E0")
TASKS_PER_SUITE, STATES_PER_TASK = 10, 50
SLICE, META = "study_slice", ("derived", "derived_assumptions")
# `rs` below is what this mode reuses of bench/real_size.py, passed in by it (this module never imports the
# script): build, inputs, run_steps, Timer, models_text and provenance_fields.


def median_ms(timer, name: str, fn, n: int, warmup: int) -> float:
    """Median milliseconds of n calls of fn after `warmup` untimed ones, synchronised as run_steps' parts are
    (`timer` a real_size Timer)."""
    timed, times = timer.wrap(name, fn), []
    for i in range(warmup + n):
        timer.start_step()
        timed()
        if i >= warmup:
            times.append(timer._last[name])
    return round(1000 * statistics.median(times), 3)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def training_samples(rs, args, policy, n: int, seed: int = 1) -> list[dict]:
    """n samples as pipeline.FrameSamples gives them to the collate: cameras at the policy's image size (the frame
    cache's), state, instruction, an action chunk and its mask, and for a world arm the cached z_t and z_{t+k}."""
    samples, _ = rs.inputs(args, args.image_size, seed, batch=n, size=args.image_size)
    rng = np.random.default_rng(seed)
    chunk, shapes = policy.cfg.policy.chunk_size, policy.shapes
    for row, sample in enumerate(samples):
        sample["actions"] = rng.uniform(-1, 1, (chunk, shapes.action_dim)).astype(np.float32)
        sample["action_mask"] = np.ones(chunk, dtype=bool)
        sample["row"] = row
        if policy.needs_world:
            sample["z_t"] = rng.normal(size=shapes.latent_dim).astype(np.float32)
            sample["z_future"] = rng.normal(size=shapes.latent_dim).astype(np.float32)
    return samples


def optimiser_step(policy, batches: list, params: list, optimizer):
    """One optimiser update as world_modality/train.py makes it, over `batches` accumulated into one update:
    the random-shift augmentation, the policy's training loss (`policy(batch)`, the trainer's call) and its
    backward pass weighted by each batch's share, gradient clipping, AdamW's step, then the reads the trainer
    makes every step (the losses as floats, the NaN/inf check of the trainable weights). -> the losses."""
    from world_modality.optim import nonfinite_params
    from world_modality.pipeline import random_shift

    t = policy.cfg.train
    total = sum(len(b.actions) for b in batches)

    def step() -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            batch = batch.replace(images=random_shift(batch.images, t.augment_shift))
            out = policy(batch)
            (out["loss"] * (len(batch.actions) / total)).backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        values = {k: float(v.detach()) for k, v in out.items()}
        nonfinite_params(policy)
        return values

    return step


def encode_windows_ms(args, encoder, timer) -> tuple[float, int]:
    """(median ms, windows): one batch of the latent cache's encoding (encode_latents at load_or_build_cache's
    batch size), windows of m frames read at the policy's image size as the cache reads them."""
    import inspect

    from world_modality.world.latent_cache import load_or_build_cache
    from world_modality.world.latent_encoding import encode_latents

    batch = inspect.signature(load_or_build_cache).parameters["batch_size"].default
    m, size = encoder.num_frames, args.image_size
    frames = np.random.default_rng(2).integers(0, 256, (batch + m - 1, size, size, 3), dtype=np.uint8)
    rows = np.arange(batch)[:, None] + np.arange(m)[None, :]
    ms = median_ms(timer, "encode", lambda: encode_latents(frames, rows, encoder, batch, progress=False), args.n, 1)
    return ms, batch


def slice_arm(rs, args, device: torch.device, experiment: str) -> tuple[dict, dict]:
    """One arm at real size: closed-loop chunks (run_steps), the latent cache's encoding (world arms), then
    optimiser steps of --train-batch samples, split into accumulated micro-batches halved while the GPU runs
    out of memory, and validation batches (the trainer's loss_sums). -> (figures, build()'s info)."""
    from world_modality.loader import loss_sums
    from world_modality.pipeline import make_collate

    t0 = time.perf_counter()
    policy, preprocess, info = rs.build(args, device, experiment)
    fig = {"build_s": round(time.perf_counter() - t0, 2), "trainable_params_m": info["trainable_params_m"]}
    obs, frames = rs.inputs(args, args.image_size)
    reset_peak(device)
    ms, fig["finite_actions"] = rs.run_steps(policy, preprocess, obs, frames, device, args.n, args.warmup)
    fig.update(chunk_ms=ms["step"], chunk_world_encoder_ms=ms["world_encoder"], peak_gpu_mem_gib_eval=peak_gib(device))
    timer = rs.Timer(device)
    if policy.needs_world:
        fig["encode_batch_ms"], fig["encode_batch"] = encode_windows_ms(args, policy.world_encoder, timer)
    collate = make_collate(preprocess)
    samples = training_samples(rs, args, policy, args.train_batch)
    fig["collate_ms"] = median_ms(timer, "collate", lambda: collate(samples), args.train_steps, 1)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=policy.cfg.train.lr, weight_decay=policy.cfg.train.weight_decay)
    policy.train()
    micro, losses = args.train_batch, []
    while True:
        batches = [collate(samples[i : i + micro]) for i in range(0, len(samples), micro)]
        reset_peak(device)
        step = optimiser_step(policy, batches, params, optimizer)
        try:
            fig["train_step_ms"] = median_ms(
                timer, "train_step", lambda: losses.append(step()), args.train_steps, args.warmup
            )
        except torch.cuda.OutOfMemoryError as err:
            if micro == 1:
                raise SystemExit(
                    f"real_size --study-slice: {experiment} training runs out of GPU memory even one sample per "
                    f"micro-batch ({err}); expected a GPU that holds the weights, gradients and AdamW state."
                ) from None
        else:
            break
        # Out of the handler first: its traceback holds the failed step's activations.
        del batches, step
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        micro = (micro + 1) // 2
    fig["peak_gpu_mem_gib_train"] = peak_gib(device)
    fig["micro_batch"], fig["grad_accum_steps"] = micro, len(batches)
    fig["samples_per_s"] = float(f"{args.train_batch / (fig['train_step_ms'] / 1000):.4g}")
    fig["finite_loss"] = all(math.isfinite(v) for step_losses in losses for v in step_losses.values())
    # Validation runs the same batches without gradients, one loss_sums call per batch of --train-batch samples.
    fig["val_step_ms"] = median_ms(timer, "val_step", lambda: loss_sums(policy, batches, seed=0), args.train_steps, 1)
    return fig, info


def slice_estimates(args, arms: dict[str, dict]) -> dict:
    """The slice's flat figures (per arm with an `_E2`/`_E0` suffix) and one run's GPU hours at the study's gpu
    budget, each estimate named `_derived` with its formula over the other figures and what it assumes."""
    from world_modality.config import build_config
    from world_modality.sim.record import CONTROL_STEPS_PER_FRAME
    from world_modality.sim.suites import STEP_LIMITS
    from world_modality.study.settings import BUDGETS

    budget, cfg = BUDGETS["gpu"], build_config({})
    # As data/split.py holds out validation episodes per task.
    val_demos = max(1, round(cfg.data.val_fraction * budget.demos_per_task))
    f = {
        "budget": "gpu",
        "demos_per_task": budget.demos_per_task,
        "tasks": TASKS_PER_SUITE,
        "epochs": budget.epochs,
        "train_batch": args.train_batch,
        "frames_per_demo": args.frames_per_demo,
        "train_demos_per_task": budget.demos_per_task - val_demos,
        "val_demos_per_task": val_demos,
        "suite": args.suite,
        "eval_episodes": TASKS_PER_SUITE * STATES_PER_TASK,
        "step_limit": STEP_LIMITS[args.suite],
        "control_steps_per_frame": CONTROL_STEPS_PER_FRAME,
        "replan_every": max(1, cfg.policy.chunk_size // 2),  # PolicyRunner's default, as the study evaluates
    }
    for arm, fig in arms.items():
        f.update({f"{k}_{arm}": v for k, v in fig.items() if k not in ("encode_batch_ms", "encode_batch")})
        if "encode_batch_ms" in fig:
            f["encode_batch_ms"], f["encode_batch"] = fig["encode_batch_ms"], fig["encode_batch"]
    derived, assumptions = {}, {}

    def derive(name: str, formula: str, value: float, assumes: str) -> None:
        f[name], derived[name], assumptions[name] = round(value, 4), formula, assumes

    frames = f["demos_per_task"] * f["tasks"] * f["frames_per_demo"]
    derive(
        "train_batches_per_epoch_derived",
        "train_demos_per_task * tasks * frames_per_demo / train_batch",
        f["train_demos_per_task"] * f["tasks"] * f["frames_per_demo"] / f["train_batch"],
        "every demonstration has frames_per_demo frames, each one training sample",
    )
    derive(
        "val_batches_per_epoch_derived",
        "val_demos_per_task * tasks * frames_per_demo / train_batch",
        f["val_demos_per_task"] * f["tasks"] * f["frames_per_demo"] / f["train_batch"],
        "validation loss at every epoch end over the held-out demonstrations (the trainer's default)",
    )
    derive(
        "chunks_per_episode_derived",
        "step_limit / (control_steps_per_frame * replan_every)",
        f["step_limit"] / (f["control_steps_per_frame"] * f["replan_every"]),
        "every episode runs to the suite's step limit (a failure; a success ends sooner): an upper bound",
    )
    hours = 3_600_000  # ms per hour
    for arm in arms:
        derive(
            f"train_gpu_hours_{arm}_derived",
            f"epochs * (train_batches_per_epoch_derived * train_step_ms_{arm} "
            f"+ val_batches_per_epoch_derived * val_step_ms_{arm}) / {hours}",
            f["epochs"]
            * (
                f["train_batches_per_epoch_derived"] * f[f"train_step_ms_{arm}"]
                + f["val_batches_per_epoch_derived"] * f[f"val_step_ms_{arm}"]
            )
            / hours,
            "the median step of the slice holds for every step; batches load in parallel with training",
        )
        derive(
            f"eval_gpu_hours_{arm}_derived",
            f"eval_episodes * chunks_per_episode_derived * chunk_ms_{arm} / {hours}",
            f["eval_episodes"] * f["chunks_per_episode_derived"] * f[f"chunk_ms_{arm}"] / hours,
            "policy time only, one observation per call: the simulator's CPU time is not counted",
        )
    if "encode_batch_ms" in f:
        derive(
            "encode_gpu_hours_derived",
            f"demos_per_task * tasks * frames_per_demo / encode_batch * encode_batch_ms / {hours}",
            frames / f["encode_batch"] * f["encode_batch_ms"] / hours,
            "one window per dataset frame, encoded once per dataset and shared by every world arm and seed on it",
        )
    for arm in arms:
        parts = [f"train_gpu_hours_{arm}_derived", f"eval_gpu_hours_{arm}_derived"]
        if "encode_batch_ms" in arms[arm]:  # an upper bound: later runs on the dataset reuse the cache
            parts.insert(0, "encode_gpu_hours_derived")
        derive(
            f"run_gpu_hours_{arm}_derived",
            " + ".join(parts),
            sum(f[p] for p in parts),
            "one run trains and evaluates once; a world arm's first run on a dataset also encodes its latent cache",
        )
    return {**f, "derived": derived, "derived_assumptions": assumptions}


def slice_table(s: dict) -> str:
    rows = [
        f"{'arm':<5}{'train step ms':>15}{'samples/s':>11}{'micro-batch':>13}{'val ms':>10}{'chunk ms':>10}"
        f"{'peak train GiB':>16}{'GPU h/run':>11}"
    ]
    for arm in s["arms"]:
        mem = s[f"peak_gpu_mem_gib_train_{arm}"]
        rows.append(
            f"{arm:<5}{s[f'train_step_ms_{arm}']:>15.2f}{s[f'samples_per_s_{arm}']:>11.2f}"
            f"{s[f'micro_batch_{arm}']:>13}{s[f'val_step_ms_{arm}']:>10.2f}{s[f'chunk_ms_{arm}']:>10.2f}"
            f"{'-' if mem is None else f'{mem:.2f}':>16}{s[f'run_gpu_hours_{arm}_derived']:>11.3f}"
        )
    if "encode_batch_ms" in s:
        rows.append(f"latent cache: {s['encode_batch']} windows in {s['encode_batch_ms']:.2f} ms (world arms)")
    rows.append(
        f"GPU h/run (derived, gpu budget: {s['demos_per_task']} demos x {s['tasks']} tasks, {s['epochs']} epochs, "
        f"batch {s['train_batch']}, {s['eval_episodes']} episodes): encode + train + evaluate, formulas in 'derived'"
    )
    return "\n".join(rows)


def study_slice(rs, args, device: torch.device, argv) -> dict:
    """Both arms' slices, then the estimates over them: the JSON object the mode prints (and writes at real size)."""
    arms, info = {}, {}
    for experiment in ARMS:
        arms[experiment], info[experiment] = slice_arm(rs, args, device, experiment)
        gc.collect()  # the arm's policy and optimiser state go before the next arm is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    e2 = info["E2"]
    return {
        "gpu": device.type == "cuda",
        "mode": "study_slice",
        "size": "tiny" if args.tiny else "real",
        "measured": True,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "models": rs.models_text(args),
        "weights": "random init",
        "arms": list(ARMS),
        "finetune": args.finetune,
        "image_size": args.image_size,
        "world_image_size": e2["world_image_size"],
        "frames": args.frames,
        "action_head": args.action_head,
        "n": args.n,
        "warmup": args.warmup,
        "train_steps": args.train_steps,
        "backbone_dtype": e2["backbone_dtype"],
        "world_dtype": e2["world_dtype"],
        "params_m": e2["params_m"],
        **slice_estimates(args, arms),
        "torch": torch.__version__,
        **rs.provenance_fields(argv),
    }


def write_results(out: Path, figures: dict, study: bool) -> None:
    """Write one mode's figures to `out`, keeping the other mode's: the inference step at the top level, the study
    slice under "study_slice" with its formulas in the file's "derived" as "study_slice.<name>" (where
    bench/_common.py's check of derived figures looks for a nested figure's formula)."""
    old = json.loads(out.read_text()) if out.exists() else {}
    top = {k: v for k, v in old.items() if k != SLICE}
    nested = dict(old.get(SLICE) or {})
    for meta in META:
        entries = top.pop(meta, None) or {}
        top[meta] = {k: v for k, v in entries.items() if not k.startswith(f"{SLICE}.")}
        nested[meta] = {k.removeprefix(f"{SLICE}."): v for k, v in entries.items() if k.startswith(f"{SLICE}.")}
    if study:
        nested = figures
    else:
        top = figures
    data = {k: v for k, v in top.items() if k not in META}
    if any(k not in META for k in nested):
        data[SLICE] = {k: v for k, v in nested.items() if k not in META}
    for meta in META:
        merged = {**(top.get(meta) or {}), **{f"{SLICE}.{k}": v for k, v in (nested.get(meta) or {}).items()}}
        if merged:
            data[meta] = merged
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
