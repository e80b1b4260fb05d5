"""Checkpoints: safetensors + JSON, written atomically, loaded strictly.

A checkpoint folder holds config.json (the resolved experiment), policy.json (shapes, world encoder identity,
the fingerprint of a frozen pretrained backbone it does not store, step, the sha256 of the files below),
model.safetensors (every tensor the policy needs to act), tokenizer.json (embedded default), ema.safetensors (the
moving average of the trainable weights, when training kept one: what loading gives by default) and, for resuming,
optimizer.safetensors + trainer_state.json (training_state.py).

Reading one checks, before any model is built, that config, policy.json and the tensors agree
(checkpoint_consistency.py) and that config.json holds the settings it was saved with; loading one checks
that the weight files are the ones saved (policy.json records their sha256; checkpoints saved before it
did load unchecked). No checkpoint with NaN/inf weights is ever written. Where checkpoints live
and how their files are read: checkpoint_store.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import ExperimentConfig
from ..optim_state import flatten_optimizer
from .checkpoint_consistency import check_consistency, check_tokenizer_file, read_meta
from .checkpoint_store import (
    CHECKSUMS,
    DONE_MARKER,
    EMA_FILE,
    FORMAT,
    CheckpointError,
    read_header,
    read_tensors,
    record_checksums,
    temporary_folder,
    verify_config,
    verify_weights,
)
from .model import PolicyShapes, WorldModalityPolicy

__all__ = [
    "CheckpointError",
    "DONE_MARKER",
    "checkpoint_keys",
    "frozen_backbone_fingerprint",
    "load_checkpoint",
    "nonfinite_tensors",
    "read_checkpoint_config",
    "save_checkpoint",
]


def checkpoint_keys(policy: WorldModalityPolicy) -> list[str]:
    """Exactly the tensors a checkpoint stores: all of them, except weights that reload from a
    pretrained path and never change (a frozen real backbone's base weights, a pretrained encoder)."""
    skip_backbone = _skips_backbone(policy)
    enc = getattr(policy, "world_encoder", None)
    skip_encoder = enc is not None and enc.pretrained_path is not None
    keys = []
    for k in policy.state_dict():
        if k.startswith("backbone.") and skip_backbone and ".lora_" not in k:
            continue
        if k.startswith("world_encoder.") and skip_encoder:
            continue
        keys.append(k)
    return keys


def _skips_backbone(policy: WorldModalityPolicy) -> bool:
    return bool(policy.backbone.pretrained and policy.cfg.policy.freeze_backbone)


def frozen_backbone_fingerprint(policy: WorldModalityPolicy, sample: int = 4096) -> str | None:
    """Identity of the pretrained backbone weights a checkpoint leaves out (they reload from
    `backbone_path`): names, shapes, dtypes and `sample` evenly strided values of every tensor.
    Enough to tell another model revision in the hub cache; the fixed sample keeps the cost independent
    of model size, where hashing every byte of a 7B model in bfloat16 would read 14 GB at each save and
    load. None when the checkpoint stores the backbone."""
    if not _skips_backbone(policy):
        return None
    h = hashlib.sha256()
    for key, tensor in sorted(policy.backbone.state_dict().items()):
        if ".lora_" in key:
            continue
        flat = tensor.detach().reshape(-1)
        values = flat[:: max(1, flat.numel() // sample)][:sample].to("cpu").contiguous()
        h.update(f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(values.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied input/output embeddings of a fully trained
    backbone): the second name of a shared storage gets its own copy."""
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(
    path: str | Path,
    policy: WorldModalityPolicy,
    *,
    step: int = 0,
    epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write into a temporary sibling folder, then rename: a kill mid-write leaves the old checkpoints intact.
    Weights with NaN/inf are refused before anything is written: such a checkpoint acts at random, and
    as the newest one it would displace the last good one in rotation."""
    final = Path(path)
    state = policy.state_dict()
    keys = checkpoint_keys(policy)
    bad = nonfinite_tensors({k: state[k] for k in keys}) + nonfinite_tensors(ema or {})
    if bad:
        raise CheckpointError(
            f"refusing to write checkpoint {final}: tensors {bad[:10]}"
            f"{' …' if len(bad) > 10 else ''} hold NaN/inf values; expected finite weights."
        )
    tmp = temporary_folder(final)
    tensors = _unshared({k: state[k].detach().cpu().contiguous() for k in keys})
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    if ema is not None:
        save_file(_unshared(dict(ema)), str(tmp / EMA_FILE), metadata={"format": FORMAT})
    policy.cfg.to_json(tmp / "config.json")
    tok = policy.backbone.tokenizer
    if hasattr(tok, "to_str"):
        (tmp / "tokenizer.json").write_text(tok.to_str())
    enc = getattr(policy, "world_encoder", None)
    meta = {
        "format": FORMAT,
        "shapes": dataclasses.asdict(policy.shapes),
        "world_encoder": enc.config_dict() if enc is not None else None,
        "frozen_backbone_fingerprint": frozen_backbone_fingerprint(policy),
        "data_info": policy.data_info,
        "step": step,
        "epoch": epoch,
    }
    meta[CHECKSUMS] = record_checksums(tmp, meta)
    (tmp / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")
    if optimizer is not None:
        opt_tensors, opt_meta = flatten_optimizer(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = {**(trainer_state or {}), "optimizer": opt_meta}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    (tmp / DONE_MARKER).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _read_config(root: Path) -> ExperimentConfig:
    # A config.json that is not JSON (or holds a value no longer accepted) is a ConfigError naming the file.
    return ExperimentConfig.from_json(root / "config.json")


def read_checkpoint_config(path: str | Path) -> ExperimentConfig:
    """The experiment config of a checkpoint, after checking its files are there, its tensor file's
    header is whole and config, policy.json and tensor shapes agree; builds nothing and reads no
    tensor (evaluation's parent process needs only this)."""
    root = Path(path)
    meta = read_meta(root)
    header = read_header(root / "model.safetensors")
    cfg = _read_config(root)
    check_consistency(root, cfg, meta, header)
    check_tokenizer_file(root, cfg)
    verify_config(root, meta)
    return cfg


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", weights: str | None = None
) -> WorldModalityPolicy:
    """Rebuild the policy from its config and load every tensor; a missing or unexpected tensor
    is an error naming it (checkpoints without LoRA or ACT weights once acted at random), and so is
    a config that disagrees with the tensors or policy.json (checked first, before any build).
    `weights`: "ema" (the moving average of the trainable weights over model.safetensors), "raw" (the
    weights as trained at the last step) or None (ema when the checkpoint has one, else raw).
    `device`: see policy/device.py (`auto` is CUDA when present); everything, the world encoder
    included, ends up there."""
    from ..world.encoder import build_world_encoder
    from .device import resolve_device
    from .factory import build_policy
    from .tokenizer import tokenizer_from_json

    device = resolve_device(device)
    if weights not in (None, "ema", "raw"):
        raise ValueError(f"weights must be 'ema', 'raw' or None, got {weights!r}.")
    root = Path(path)
    if weights == "ema" and not (root / EMA_FILE).exists():
        raise CheckpointError(f"checkpoint {root} has no {EMA_FILE} (trained with ema_decay 0); load weights='raw'.")
    meta = read_meta(root)
    cfg = _read_config(root)
    check_consistency(root, cfg, meta, read_header(root / "model.safetensors"))
    check_tokenizer_file(root, cfg)
    verify_config(root, meta)
    tok_path = root / "tokenizer.json"
    try:
        tokenizer = tokenizer_from_json(tok_path.read_text()) if tok_path.exists() else None
    except Exception as e:  # the tokenizers library raises its own Exception type for a malformed file
        raise CheckpointError(f"{tok_path} is not a valid tokenizer file ({e}).") from None
    enc = None
    if meta.get("world_encoder"):
        enc_cfg = {k: v for k, v in meta["world_encoder"].items() if k != "encoder_id"}
        # Built where the policy will run (the encoder's own "auto" would load pretrained weights
        # onto the GPU even for a CPU load).
        enc = build_world_encoder(**enc_cfg, device=device)
    policy = build_policy(cfg, PolicyShapes(**meta["shapes"]), tokenizer=tokenizer, world_encoder=enc)
    policy.data_info = dict(meta.get("data_info", policy.data_info))
    tensors = read_tensors(root / "model.safetensors")
    if weights != "raw" and (root / EMA_FILE).exists():
        averaged = read_tensors(root / EMA_FILE)
        unknown = sorted(k for k in averaged if k not in tensors or averaged[k].shape != tensors[k].shape)
        if unknown:
            raise CheckpointError(
                f"checkpoint {root}: {EMA_FILE} holds tensors {unknown[:10]} that model.safetensors "
                f"lacks or shapes differently; expected an average of the trained weights."
            )
        tensors.update({k: v.to(tensors[k].dtype) for k, v in averaged.items()})
    bad = nonfinite_tensors(tensors)
    if bad:
        # Written before training stopped at NaN (or damaged since): it would act NaN in every episode.
        raise CheckpointError(
            f"checkpoint {root} holds NaN/inf values in tensors {bad[:10]}"
            f"{' …' if len(bad) > 10 else ''}; expected finite weights (an earlier checkpoint "
            f"of the run may be finite)."
        )
    expected = set(checkpoint_keys(policy))
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {root} does not match the policy its config builds: "
            f"missing tensors {missing[:10]}{' …' if len(missing) > 10 else ''}; "
            f"unexpected tensors {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}."
        )
    # After the checks above, which name what is wrong where they can tell; the hash tells only that something is.
    verify_weights(root, meta, ("model.safetensors", "tokenizer.json") + ((EMA_FILE,) if weights != "raw" else ()))
    try:
        policy.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {root}: tensor shapes do not match the policy: {e}") from e
    saved_fp, loaded_fp = meta.get("frozen_backbone_fingerprint"), frozen_backbone_fingerprint(policy)
    if saved_fp and loaded_fp != saved_fp:
        raise CheckpointError(
            f"checkpoint {root}: the frozen backbone loaded from {cfg.policy.backbone_path!r} has weights fingerprint "
            f"{loaded_fp!r}, but the checkpoint was trained on {saved_fp!r}. The checkpoint stores only the trained "
            "weights (LoRA, heads); point backbone_path at the model revision it was trained with."
        )
    if enc is not None:
        enc.refresh_id()
        saved_id = meta["world_encoder"].get("encoder_id")
        if saved_id and enc.encoder_id != saved_id:
            raise CheckpointError(
                f"checkpoint {root}: world encoder weights hash to {enc.encoder_id!r}, policy.json says {saved_id!r}."
            )
    return policy.to(device).eval()
