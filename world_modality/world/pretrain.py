"""Self-supervised V-JEPA pretraining of the tiny world encoder on a dataset's own world-camera frames.

`world-modality pretrain-world --dataset DIR --out DIR` trains the embedded default's tiny `VJEPA2Model`
(`tiny_vjepa2_config`, the same seeded random init) as V-JEPA trains: each m-frame window of the world camera
(read from the frame cache at the pipeline's `--image_size`, then prepared exactly as the `vjepa2` loading path
prepares it) is cut into tubelet tokens; multi-block masks over the spatial token grid, shared across time,
hide some tubes; a context encoder sees only the visible tokens, and the model's own predictor regresses, at the
hidden positions, the layer-normed output of an EMA target encoder that saw the whole window (L1 loss). No pixel
is reconstructed and no label is read.

Only the training episodes of the pipeline's held-out split are used, so the episodes that offline evaluation
and `world-modality probe` hold out stay unseen by the encoder too.

The out folder holds `pretrain.json` (the settings; a rerun with others is refused), `losses.jsonl` and
`losses.png`, `checkpoints/step-N/` (safetensors + JSON, written atomically: a rerun of the same command
continues from the newest), and, at the end, a Hugging Face model folder: `config.json` + `model.safetensors`
(`save_pretrained`; the encoder is the EMA target, as V-JEPA evaluates) and `video_preprocessor_config.json`,
which `--world_encoder vjepa2 --world_encoder_path DIR` loads unchanged.

This module holds the training loop; its settings are in pretrain_settings.py, the objective (masks, context
encoder, loss) in pretrain_jepa.py and what is written to the out folder in pretrain_checkpoint.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import ConfigError
from .pretrain_checkpoint import (
    FORMAT,
    LOSSES_FILE,
    PLOT_FILE,
    SETTINGS_FILE,
    atomic_write_text,
    checkpoints,
    keep_losses_upto,
    load_checkpoint,
    plot_losses,
    save_checkpoint,
    save_final,
)
from .pretrain_jepa import MASKS, jepa_loss, preprocess, sample_masks
from .pretrain_settings import RESUMABLE, PretrainSettings
from .vjepa2_loading import tiny_vjepa2_config
from .vjepa2_processing import VJEPA2Processing


def build_model(settings: PretrainSettings) -> nn.Module:
    """The tiny VJEPA2Model at its default init (seeded as `build_world_encoder` seeds it), trainable."""
    from transformers import VJEPA2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = VJEPA2Model(tiny_vjepa2_config(settings.num_frames, settings.world_image_size))
    return model.float().train()


def lr_at(step: int, settings: PretrainSettings) -> float:
    """Linear warm-up, then constant: independent of `steps`, so a run extended later repeats an uninterrupted
    one (a cosine decay over `steps` would change every step's rate when steps change)."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    return settings.lr


# -- checkpoints ------------------------------------------------------------------------------------------
def _identity(settings: PretrainSettings, fingerprint: str) -> dict[str, Any]:
    d = {k: v for k, v in dataclasses.asdict(settings).items() if k not in RESUMABLE}
    return {**d, "dataset_fingerprint": fingerprint}


def _check_out(out: Path, identity: dict[str, Any]) -> None:
    """Refuse a folder that is a file, holds something else, or a pretraining with other settings."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the pretrained encoder.")
    path = out / SETTINGS_FILE
    if not path.exists():
        stray = [p.name for p in out.iterdir()] if out.is_dir() else []
        if stray:
            raise ConfigError(
                f"--out {out} is not empty ({', '.join(sorted(stray)[:5])}) and holds no "
                f"{SETTINGS_FILE}; expected a new folder or one that pretrain-world wrote."
            )
        return
    try:
        saved = json.loads(path.read_text())["identity"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a pretrain-world settings file ({e}); use another --out.") from None
    diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if diff:
        details = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {identity.get(k)!r}" for k in diff[:6])
        raise ConfigError(
            f"--out {out} holds a pretraining with other settings ({details}); only "
            f"{', '.join(RESUMABLE)} may change on a rerun. Use another --out."
        )


# -- the job ----------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    out: Path
    steps: int
    resumed_from: int
    losses: list[float]
    seconds_per_step: float | None


def train_windows(settings: PretrainSettings, dataset) -> np.ndarray:
    """(N, m) frame rows of every window of the training episodes (the pipeline's split)."""
    # The pipeline's split, so the episodes it holds out are held out here too (pipeline sits above world/;
    # imported here, not at module level, to keep world/ importable without it).
    from ..data.split import split_episodes
    from ..data.windows import WindowSpec, past_frame_rows

    spec = WindowSpec(num_frames=settings.num_frames, frame_stride=settings.frame_stride)
    train_eps, _ = split_episodes(dataset, settings.val_fraction)
    rows = dataset.rows_of(train_eps)
    return past_frame_rows(dataset.episodes, spec)[rows]


def pretrain(
    settings: PretrainSettings, out: str | Path, progress: bool = True, log: Callable[[str], None] = print
) -> PretrainResult:
    """Train (or continue) into `out`; see the module docstring. Returns the losses of the steps run now."""
    from ..data.lerobot import load_dataset

    settings.check()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the pretrained encoder.")
    dataset = load_dataset(
        settings.dataset, instruction_key=settings.instruction_key, episode_id_key=settings.episode_id_key
    )
    dataset.progress = progress
    if settings.world_image_key not in dataset.image_keys:
        raise ConfigError(
            f"dataset {dataset.root} has no camera {settings.world_image_key!r}; its cameras are {dataset.image_keys}."
        )
    identity = _identity(settings, dataset.fingerprint())
    _check_out(out, identity)
    found = checkpoints(out)
    done = int(found[-1].name.split("-")[1]) if found else 0
    if done > settings.steps:
        raise ConfigError(
            f"--out {out} already holds {done} steps, more than --steps {settings.steps}; "
            f"ask for at least {done} steps, or use another --out."
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / SETTINGS_FILE,
        json.dumps({"format": FORMAT, "identity": identity, "settings": dataclasses.asdict(settings)}, indent=2) + "\n",
    )
    torch.set_num_threads(settings.num_threads or max(1, (os.cpu_count() or 2) // 2))

    windows = train_windows(settings, dataset)
    frames = dataset.images(settings.world_image_key, settings.image_size)  # the frame cache's memmap
    processing = VJEPA2Processing.for_crop(settings.world_image_size)
    model = build_model(settings)
    target = copy.deepcopy(model.encoder).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start = load_checkpoint(found[-1], model, target, opt, identity) if found else 0
    keep_losses_upto(out, start)
    grid = settings.world_image_size // model.config.patch_size
    depth = settings.num_frames // model.config.tubelet_size
    log(
        f"[pretrain-world] {len(windows)} windows (m={settings.num_frames}, stride={settings.frame_stride}) of "
        f"{settings.world_image_key} from the training episodes of {dataset.root}; {grid}x{grid}x{depth} tokens; "
        + (f"resuming at step {start}/{settings.steps}" if start else f"{settings.steps} steps")
    )

    losses: list[float] = []
    times: list[float] = []
    bar = tqdm(
        total=settings.steps, initial=start, desc="pretrain-world", unit="step", disable=not progress, mininterval=0.5
    )
    with open(out / LOSSES_FILE, "a") as log_file:
        for step in range(start, settings.steps):
            t0 = time.perf_counter()
            # Every step's draws come from (seed, step): a resumed run repeats the uninterrupted one exactly.
            rng = np.random.default_rng([settings.seed, step])
            pick = rng.choice(len(windows), size=settings.batch_size, replace=len(windows) < settings.batch_size)
            pixels = preprocess(frames[windows[pick]], processing)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, settings)
            terms, spreads = [], []
            for num_blocks, scale in MASKS:
                ctx, tgt = sample_masks(rng, settings.batch_size, grid, depth, num_blocks, scale)
                loss, spread = jepa_loss(model, target, pixels, ctx, tgt)
                terms.append(loss)
                spreads.append(spread)
            loss = torch.stack(terms).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"pretrain-world: the loss became {float(loss)} at step {step}; the last "
                    f"finite checkpoint is kept in {out / 'checkpoints'}. Try a lower --lr."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():  # the target follows the context encoder slowly (EMA), never by gradient
                for pt, ps in zip(target.parameters(), model.encoder.parameters()):
                    pt.mul_(settings.ema).add_(ps.detach(), alpha=1 - settings.ema)
            times.append(time.perf_counter() - t0)
            value = loss.item()
            losses.append(value)
            log_file.write(
                json.dumps(
                    {
                        "step": step + 1,
                        "loss": value,
                        "target_std": float(np.mean(spreads)),
                        "lr": lr_at(step, settings),
                    }
                )
                + "\n"
            )
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", ms_per_step=f"{1000 * np.median(times[-50:]):.0f}")
            if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
                log_file.flush()
                save_checkpoint(out, step + 1, model, target, opt, identity)
                plot_losses(out)
    bar.close()
    save_final(out, model, target, settings)
    plot_losses(out)
    per_step = float(np.median(times)) if times else None
    if times:
        log(
            f"[pretrain-world] steps {start + 1}-{settings.steps}: {sum(times):.1f} s, "
            f"{1000 * per_step:.0f} ms/step (median, batch {settings.batch_size}); loss {losses[0]:.4f} -> "
            f"{losses[-1]:.4f}"
        )
    else:
        log(f"[pretrain-world] {out} already holds all {settings.steps} steps; its model folder was rewritten")
    log(
        f"[pretrain-world] encoder folder: {out} (use --world_encoder vjepa2 --world_encoder_path {out}); "
        f"loss curve: {out / PLOT_FILE}"
    )
    return PretrainResult(out, settings.steps, start, losses, per_step)
