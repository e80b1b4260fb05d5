"""Offline evaluation on held-out episodes: action MSE per memory ablation, and world-prediction
error against the copy-last baseline (ẑ_{t+k} = z_t).

Memory ablations: `predicted`, `present` (the sample's own z_t: the m frames of history without
foresight), `oracle` (the sample's own true future), `zero`, `random`, and `shuffle` (the true
future of a training frame of another episode, of another task where the dataset has one;
`pipeline.shuffle_memory_rows`, seeded by `seed`).

Offline action loss did not predict closed-loop success in the research notes; these numbers
explain a policy, they do not rank it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import MEMORY_MODES, ConfigError, check_memory_mode
from ..pipeline import FrameSamples, make_collate, prepare_data, shuffle_memory_rows
from ..policy.checkpoint import load_checkpoint
from ..policy.checkpoint_store import resolve_checkpoint
from ..policy.device import resolve_device
from ..policy.factory import build_preprocessor
from ..world.prophet import world_mse


@torch.no_grad()
def evaluate_offline(
    checkpoint: str | Path,
    dataset: str | None = None,
    batch_size: int = 32,
    modes: Sequence[str] = MEMORY_MODES,
    seed: int = 0,
    split: str = "val",
    device: str = "auto",
) -> dict:
    check_settings(batch_size, modes, split)
    device = resolve_device(device)
    ckpt = resolve_checkpoint(checkpoint)
    policy = load_checkpoint(ckpt, device)
    cfg = policy.cfg
    if dataset:
        cfg = cfg.replace(dataset=dataset)
    data = prepare_data(cfg, policy.world_encoder if policy.needs_world else None, progress=False)
    ds, shapes = data.dataset, policy.shapes
    if (ds.state.shape[1], ds.action.shape[1]) != (shapes.state_dim, shapes.action_dim):
        raise ValueError(
            f"dataset {ds.root} has {ds.state.shape[1]}-D states and {ds.action.shape[1]}-D actions; the "
            f"checkpoint {ckpt} was trained on {shapes.state_dim}-D states and {shapes.action_dim}-D actions."
        )
    rows = data.val_rows if split == "val" else data.train_rows
    if len(rows) == 0:
        raise ValueError(f"no {split} rows to evaluate in {cfg.data.dataset}.")
    modes = list(modes) if policy.use_memory else ["none"]
    # `shuffle`: each sample gets the true future of a training frame of another episode (another
    # task where there is one), never a neighbour's from its own batch (almost its own future).
    memory_rows = shuffle_memory_rows(ds, rows, data.train_rows, seed) if "shuffle" in modes else None
    samples = FrameSamples(data, rows, cfg.data.image_keys, memory_rows=memory_rows)
    collate = make_collate(build_preprocessor(cfg, policy))
    sums = {m: {"sq_norm": 0.0, "sq_raw": 0.0, "n": 0.0} for m in modes}
    world = {"prophet": 0.0, "copy_last": 0.0, "n": 0}
    for start in range(0, len(samples), batch_size):
        batch = collate([samples[i] for i in range(start, min(start + batch_size, len(samples)))]).to(device)
        mask = batch.action_mask.float()[..., None]
        for mode in modes:
            gen = torch.Generator(device=device).manual_seed(seed + start)
            pred, ctx = policy.predict_actions(
                batch, memory_mode=None if mode == "none" else mode, generator=gen, return_context=True
            )
            err = (pred - batch.actions) ** 2
            err_norm = err / policy.action_std**2
            s = sums[mode]
            s["sq_raw"] += float((err * mask).sum())
            s["sq_norm"] += float((err_norm * mask).sum())
            s["n"] += float(mask.sum()) * err.shape[-1]
        if policy.needs_world:
            z_pred = ctx["z_pred"]  # the Prophet's output does not depend on the memory mode
            std = policy.prophet.latent_std
            b = batch.z_t.shape[0]
            world["prophet"] += float(world_mse(z_pred, batch.z_future, std)) * b
            world["copy_last"] += float(world_mse(batch.z_t, batch.z_future, std)) * b
            world["n"] += b
    result = {
        "checkpoint": str(ckpt),
        "dataset": cfg.data.dataset,
        "split": split,
        "n_frames": int(len(rows)),
        "n_episodes": int(len(np.unique(data.dataset.episode_ids[rows]))),
        "action_mse": {m: s["sq_norm"] / s["n"] for m, s in sums.items()},
        "action_mse_raw": {m: s["sq_raw"] / s["n"] for m, s in sums.items()},
        "gate": policy.gate(),
    }
    if world["n"]:
        result["world_mse"] = world["prophet"] / world["n"]
        result["world_mse_copy_last"] = world["copy_last"] / world["n"]
        result["world_skill"] = 1.0 - result["world_mse"] / max(result["world_mse_copy_last"], 1e-12)
    return result


def check_settings(batch_size: int, modes: Sequence[str], split: str) -> None:
    """Refuse settings that would fail only after the checkpoint and dataset are loaded (a batch size of 0
    ended in `range() arg 3 must not be zero`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch_size must be an integer >= 1, got {batch_size!r}.")
    if not modes:
        raise ConfigError(f"--memory must name one or more of {MEMORY_MODES}, got {list(modes)!r}.")
    for mode in modes:
        check_memory_mode(mode, "offline")
    if split not in ("val", "train"):
        raise ConfigError(f"--split must be 'val' or 'train', got {split!r}.")


def check_output_file(path: str | Path) -> None:
    """Refuse a result path that cannot be written before the evaluation runs, not after."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; expected the path of a JSON file to write.")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out} cannot be created: {parent} is a file; expected a folder path.")


def format_table(result: dict) -> str:
    lines = [
        f"offline evaluation of {result['checkpoint']} on {result['n_episodes']} {result['split']} episodes "
        f"({result['n_frames']} frames)",
        "",
        f"{'memory':<10} {'action MSE (norm.)':>19} {'action MSE (raw)':>17}",
    ]
    for mode, v in result["action_mse"].items():
        lines.append(f"{mode:<10} {v:>19.4f} {result['action_mse_raw'][mode]:>17.5f}")
    if "world_mse" in result:
        lines += [
            "",
            f"world MSE (normalised latents): prophet {result['world_mse']:.4f} | "
            f"copy-last {result['world_mse_copy_last']:.4f} | skill {result['world_skill']:+.3f}",
        ]
    if result.get("gate") is not None:
        lines.append(f"gate: raw {result['gate']:+.4f}, tanh {np.tanh(result['gate']):+.4f}")
    return "\n".join(lines)


def write_result(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
