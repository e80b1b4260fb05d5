"""Training loop (accelerate): per-epoch metrics to console, JSONL and TensorBoard; atomic
checkpoints; exact resume from the newest checkpoint, or (`--no-resume`) a clean run whose folder
never mixes with an earlier one; a NaN/inf loss or weight stops the run at that step.

`python -m world_modality.train --instruction_key task --lambda_world 0.2 --delta_prediction ...`
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ConfigError, ExperimentConfig, matching_preset, parse_train_args
from .errors import run_reporting_errors
from .loader import load_batches, validation_losses
from .optim import Ema, nonfinite_params, schedule_lr
from .pipeline import FrameSamples, make_collate, prepare_data, random_shift
from .policy.checkpoint import DONE_MARKER, load_checkpoint, save_checkpoint
from .policy.checkpoint_store import checkpoints_in
from .policy.factory import build_policy, build_preprocessor, check_image_size, world_encoder_from_config
from .policy.model import PolicyShapes
from .policy.tokenizer import build_tokenizer
from .policy.training_state import load_ema, load_training_state, read_trainer_state
from .provenance import provenance
from .train_output import (
    MetricsLogger,
    check_output_dir,
    check_same_experiment,
    drop_metrics_after,
    move_aside,
    write_run_config,
)


class TrainingDiverged(ValueError):
    """A loss or a weight became NaN/inf: training stops at that step and keeps its last finite checkpoint."""


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def train(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """Train to `max_epochs`, resuming from the newest checkpoint in the run folder; returns the final checkpoint."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    t = cfg.train
    if not cfg.data.dataset:
        raise ConfigError("`dataset` is required: the root of a LeRobot v3-layout dataset (--dataset PATH).")
    check_output_dir(Path(t.output_dir))
    # Backbones that cannot patch `image_size` fail now, not after hours of frame and latent caching.
    check_image_size(cfg)
    # The other processes wait in a barrier while the main one builds the frame and latent caches
    # (hours for V-JEPA 2 on the public LIBERO sets): NCCL's 10-minute default would kill them.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=t.dist_timeout_minutes))],
    )
    if accelerator.device.type == "cpu":
        # Measured on 2 cores: 2 threads beside one busy simulator took 6 s/step, 1 thread 0.13 s/step.
        torch.set_num_threads(t.num_threads or max(1, (os.cpu_count() or 2) // 2))
    main = accelerator.is_main_process
    run_dir = Path(t.output_dir)
    code = provenance()  # recorded beside the config, never compared by a resume
    # Created only once data and policy are ready: a run that fails before leaves no empty folder.

    needs_world = not cfg.policy.disable_future_injection or cfg.world.lambda_world > 0
    encoder = world_encoder_from_config(cfg) if needs_world else None
    with accelerator.main_process_first():  # one process encodes the latent cache, the others read it
        data = prepare_data(cfg, encoder, progress=progress and main)
    ds = data.dataset
    shapes = PolicyShapes(ds.state.shape[1], ds.action.shape[1], encoder.latent_dim if encoder else 0)

    ckpts = checkpoints_in(run_dir) if t.resume else []
    if ckpts:
        policy = load_checkpoint(ckpts[-1], weights="raw")
        check_same_experiment(policy.cfg, cfg, ckpts[-1])
        policy.cfg = cfg
        saved = read_trainer_state(ckpts[-1])
        done = saved["epoch"] + (saved["batches_done_in_epoch"] > 0)  # epochs begun
        if done > t.max_epochs:
            # Its "final checkpoint" would be a model trained longer than this command asks for.
            trained = f"{saved['epoch']} epoch(s)" + (" and part of the next" if saved["batches_done_in_epoch"] else "")
            raise ConfigError(
                f"cannot resume {run_dir} to --max_epochs {t.max_epochs}: its newest checkpoint "
                f"{ckpts[-1].name} has already trained {trained}. Use --max_epochs >= {done}, "
                f"another --output_dir, or --no-resume."
            )
    else:
        corpus = sorted(set(ds.instructions) | set(t for t in (data.texts or []) if t))
        tokenizer = build_tokenizer(corpus) if cfg.policy.backbone.startswith("tiny") else None
        torch.manual_seed(t.seed)
        policy = build_policy(cfg, shapes, tokenizer=tokenizer, world_encoder=encoder)
        stats = data.action_state_stats()
        if data.latents is not None:
            stats.update(data.latent_stats())
        policy.set_stats(**stats)
        from .data.frames import native_frame_sizes
        from .data.starts import read_training_starts
        from .sim.render_profile import recorded_profile

        # Public LIBERO conversions store every 20 Hz control step (labelled 10 fps): one step per row
        # unless the dataset says otherwise (generated demonstrations hold each action for 2 steps).
        policy.data_info = {
            "fps": ds.fps,
            "control_steps_per_frame": int(ds.info.get("control_steps_per_frame", 1)),
            # LIBERO's gripper command is binary (-1 open, +1 close) in the data: acting
            # snaps the regressed value back to it rather than half-closing the fingers.
            "binary_gripper": bool(np.isin(ds.action[:, -1], (-1.0, 1.0)).all()),
            # The cameras' recorded size: evaluation renders at it, then resizes as the frame cache did.
            "frame_size": native_frame_sizes(
                ds.features, tuple(cfg.data.image_keys) + ((cfg.world.world_image_key,) if encoder is not None else ())
            ),
            # The camera settings of the training frames (`sim/render_profile.py`): evaluation renders with them.
            "render_profile": recorded_profile(ds.info),
            # The demonstrations' start states travel with the policy, so evaluation can
            # check held-out starts even where the dataset is not (data/starts.py).
            "training_starts": read_training_starts(ds.root),
        }
    if main:
        if not t.resume and run_dir.is_dir() and any(run_dir.iterdir()):
            moved = move_aside(run_dir)
            print(f"[train] --no-resume: moved the earlier contents of {run_dir} to {moved}")
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if main:
        write_run_config(run_dir, cfg, code, resumed=bool(ckpts))
        if data.texts is not None:
            n = len(data.texts)
            print(
                f"[train] chain-of-causation annotations: {n - data.texts_missing}/{n} frames annotated, "
                f"{data.texts_missing} missing (left out of the text loss)"
            )

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    step, start_epoch, skip, partial, updates = 0, 0, 0, {}, 0
    if ckpts:
        state = load_training_state(ckpts[-1], optimizer)
        step, start_epoch, skip = state["step"], state["epoch"], state["batches_done_in_epoch"]
        partial, updates = state.get("epoch_partial") or {}, state.get("updates", 0)
    if main and t.resume:
        # Without a checkpoint the run starts at step 0: lines an earlier attempt logged go too.
        drop_metrics_after(run_dir / "metrics.jsonl", step)

    samples = FrameSamples(data, data.train_rows, cfg.data.image_keys)
    val_samples = FrameSamples(data, data.val_rows, cfg.data.image_keys) if t.val_loss else None
    collate = make_collate(build_preprocessor(cfg, policy))
    steps_per_epoch = math.ceil(len(samples) / t.batch_size)
    loader_options = {
        "num_workers": t.num_workers,
        "prefetch_factor": t.prefetch_factor,
        "pin_memory": t.num_workers > 0 and torch.cuda.is_available(),
    }
    # Optimizer updates over the whole run (each process does the same count): the cosine's horizon.
    per_epoch = steps_per_epoch // accelerator.num_processes
    total_updates = t.max_epochs * math.ceil(per_epoch / t.grad_accum_steps)
    logger = MetricsLogger(run_dir, main, t.tensorboard)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    model = accelerator.unwrap_model(policy)
    ema = Ema(model, t.ema_decay) if t.ema_decay > 0 else None
    if ema is not None and ckpts:
        ema.load(load_ema(ckpts[-1]))
    if main:
        n_train = sum(p.numel() for p in params)
        print(
            f"[train] {matching_preset(cfg) or 'custom'} | {len(samples)} samples, {steps_per_epoch} steps/epoch, "
            f"{accelerator.num_processes} process(es) on {accelerator.device}, "
            f"{n_train / 1e6:.2f} M trainable params | run {run_dir}" + (f" | resumed at step {step}" if ckpts else "")
        )

    def save(epoch: int, done_in_epoch: int, sums: dict[str, float] | None = None, count: int = 0) -> None:
        # A mid-epoch checkpoint keeps each process's running sums, so the resumed epoch logs the
        # means of all its batches, not only of those after the resume.
        epoch_partial = {}
        if sums:
            keys = sorted(sums)
            local = torch.tensor(
                [[sums[k] for k in keys] + [float(count)]], dtype=torch.float64, device=accelerator.device
            )
            rows = accelerator.gather(local) if accelerator.num_processes > 1 else local
            epoch_partial = {"keys": keys, "per_process": rows.cpu().tolist()}
        accelerator.wait_for_everyone()
        if main:
            save_checkpoint(
                run_dir / "checkpoints" / f"step-{step:08d}",
                model,
                step=step,
                epoch=epoch,
                optimizer=optimizer,
                ema=ema.tensors() if ema is not None else None,
                trainer_state={
                    "step": step,
                    "epoch": epoch,
                    "batches_done_in_epoch": done_in_epoch,
                    "epoch_partial": epoch_partial,
                    "updates": updates,
                    "provenance": code,
                },
            )
            for old in checkpoints_in(run_dir)[: -t.keep_checkpoints]:
                # Marker first: a kill mid-delete must not leave a "complete" folder missing files.
                (old / DONE_MARKER).unlink(missing_ok=True)
                shutil.rmtree(old, ignore_errors=True)

    for epoch in range(start_epoch, t.max_epochs):
        order = _epoch_order(len(samples), t.seed, epoch)
        batches = [order[i : i + t.batch_size] for i in range(0, len(order), t.batch_size)]
        # Each process takes every n-th batch, so launchers split work without a sampler; every
        # process gets the same count (a trailing odd batch is dropped), or gradient sync would hang.
        n_proc = accelerator.num_processes
        mine = [skip + accelerator.process_index + j * n_proc for j in range((len(batches) - skip) // n_proc)]
        sums: dict[str, float] = {}
        count, t0 = 0, time.time()
        saved_rows = partial.get("per_process", [])
        if skip and len(saved_rows) == n_proc:
            sums = dict(zip(partial["keys"], saved_rows[accelerator.process_index][:-1]))
            count = int(saved_rows[accelerator.process_index][-1])
        policy.train()
        bar = tqdm(
            mine,
            desc=f"epoch {epoch + 1}/{t.max_epochs}",
            disable=not (progress and main),
            leave=False,
            mininterval=0.5,
        )
        loaded = load_batches(samples, collate, [batches[bi] for bi in mine], **loader_options)
        accum = t.grad_accum_steps
        for j, (bi, batch) in enumerate(zip(bar, loaded)):
            # Updates group `accum` consecutive batches of this process (the epoch's last group may be
            # shorter); mid-epoch checkpoints fall only after an update, so no partial gradient is ever saved.
            first, last = j - j % accum, min(j - j % accum + accum, len(mine)) - 1
            # Per-step seed: noise and dropout depend only on (seed, step), so a resumed run repeats them.
            torch.manual_seed(t.seed * 1_000_003 + step * 997 + accelerator.process_index)
            batch = batch.replace(images=random_shift(batch.images, t.augment_shift))
            if j == first:
                optimizer.zero_grad(set_to_none=True)
            with accelerator.no_sync(policy) if j < last else contextlib.nullcontext():
                out = policy(batch)  # forward() is losses(); DDP syncs gradients only through forward
                loss = out["loss"]
                if accum > 1:  # each sample weighs the same in the update, as in one batch of the group
                    loss = loss * (len(batches[bi]) / sum(len(batches[mine[k]]) for k in range(first, last + 1)))
                accelerator.backward(loss)
            if j == last:
                if t.warmup_steps or t.lr_schedule != "constant":
                    schedule_lr(
                        optimizer, updates, t.lr, warmup=t.warmup_steps, schedule=t.lr_schedule, total=total_updates
                    )
                if t.grad_clip > 0:
                    accelerator.clip_grad_norm_(params, t.grad_clip)
                optimizer.step()
                updates += 1
                if ema is not None:
                    ema.update(model)
            step += accelerator.num_processes
            values = {k: float(v.detach()) for k, v in out.items()}
            _stop_if_diverged(
                accelerator,
                model,
                values,
                step=step,
                epoch=epoch + 1,
                batch=bi + 1,
                n_batches=len(batches),
                run_dir=run_dir,
                cfg=cfg,
            )
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.set_postfix({k: f"{v / count:.4f}" for k, v in sums.items() if k != "loss"})
            # Batches all processes have done after this round: the same on every process (`bi` is
            # not), so all of them take the same branch; one alone in save() would wait forever in
            # its gather. The last round is left to the epoch-end save.
            done = bi - accelerator.process_index + n_proc
            if t.save_every_steps and step % t.save_every_steps == 0 and done + n_proc <= len(batches) and j == last:
                save(epoch, done, sums, count)
        skip, partial = 0, {}
        record = {"kind": "train", "epoch": epoch + 1, "step": step, "seconds": round(time.time() - t0, 2)}
        means = torch.tensor([sums[k] / max(count, 1) for k in sorted(sums)])
        means = accelerator.reduce(means, reduction="mean") if accelerator.num_processes > 1 else means
        record.update({k: float(v) for k, v in zip(sorted(sums), means)})
        if val_samples is not None and len(val_samples):
            record.update(
                validation_losses(
                    accelerator, model, ema, val_samples, collate, t.batch_size, seed=t.seed + 7919, **loader_options
                )
            )
        gate = model.gate()
        if gate is not None:
            record.update({"gate": gate, "gate_tanh": math.tanh(gate)})
        logger.log(record, step)
        if main:
            shown = " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "kind"
            )
            print(f"[train] {shown}")
        save(epoch + 1, 0)
    logger.close()
    accelerator.wait_for_everyone()
    final = checkpoints_in(run_dir)[-1]
    if final.name != f"step-{step:08d}":
        # The run folder holds a checkpoint this run did not write: never report another model as final.
        raise RuntimeError(f"the newest checkpoint in {run_dir} is {final.name}, but this run ended at step {step}.")
    if main:
        (run_dir / "LATEST").write_text(final.name + "\n")
    return final


def _stop_if_diverged(
    accelerator,
    model: torch.nn.Module,
    values: dict[str, float],
    *,
    step: int,
    epoch: int,
    batch: int,
    n_batches: int,
    run_dir: Path,
    cfg: ExperimentConfig,
) -> None:
    """Stop at the first step whose loss (on any process) or updated weights are NaN/inf, naming the step,
    epoch and loss; nothing of it is saved, so the newest checkpoint is the last finite one. Every
    process takes the same decision (the flags are summed), or the others would wait in the next
    gradient sync forever."""
    bad_losses = sorted(k for k, v in values.items() if not math.isfinite(v))
    bad_params = nonfinite_params(model)
    flags = torch.tensor([float(bool(bad_losses)), float(bool(bad_params))], device=accelerator.device)
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    if not bool(flags.any()):
        return
    named = [k for k in bad_losses if k != "loss"] or bad_losses
    if bad_losses:
        what = ", ".join(f"{k} = {values[k]}" for k in named)
    elif flags[0] > 0:
        what = "the loss of another process is NaN/inf"
    else:
        what = (
            f"the losses were finite but the update made parameters {bad_params[:5]}"
            f"{' …' if len(bad_params) > 5 else ''} NaN/inf"
        )
    kept = checkpoints_in(run_dir)
    keep = f"the last finite checkpoint, {kept[-1]}, is kept" if kept else "no checkpoint had been written yet"
    fp16 = " or train the backbone in bfloat16 (float16 overflows)" if cfg.policy.backbone_dtype == "float16" else ""
    raise TrainingDiverged(
        f"training diverged at step {step} (epoch {epoch}, batch {batch} of {n_batches}): "
        f"{what}; nothing of this step was saved and {keep}. Expected finite losses: "
        f"lower --lr (now {cfg.train.lr:g}){fp16}."
    )


def main(argv: Sequence[str] | None = None) -> int:
    def run() -> int:
        final = train(parse_train_args(argv))
        print(f"[train] final checkpoint: {final}")
        return 0

    return run_reporting_errors("world_modality.train", run)


if __name__ == "__main__":
    sys.exit(main())
