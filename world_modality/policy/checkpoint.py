"""Checkpoints: safetensors + JSON, written atomically, loaded strictly.

A checkpoint folder holds config.json (the resolved experiment), policy.json (shapes, world
encoder identity, the fingerprint of a frozen pretrained backbone it does not store, step), model.safetensors (every tensor the policy needs to act), tokenizer.json
(embedded default) and, for resuming, optimizer.safetensors + trainer_state.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ExperimentConfig
from .model import PolicyShapes, WorldModalityPolicy

FORMAT = "world-modality-checkpoint/1"
DONE_MARKER = "COMPLETE"


class CheckpointError(ValueError):
    """A checkpoint is incomplete, corrupt or does not match the policy it is loaded into."""


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_tag() -> str:
    # The host is part of a writer's temporary folder name: a process id means nothing on another
    # machine sharing the run folder (a requeued job on another node, another container).
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def remove_partial_checkpoints(folder: str | Path) -> list[Path]:
    """Delete temporary folders left by writers on this machine that were killed mid-write (their
    process is gone); they are never loaded, only wasted space. A live writer's folder, and any
    folder written from another machine, is left alone."""
    host = _writer_tag().rsplit("-", 1)[0]
    removed = []
    for tmp in Path(folder).glob(f".tmp-*-{host}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


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


def _atomic_dir(final: Path):
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(final.parent)
    tmp = final.parent / f".tmp-{final.name}-{_writer_tag()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(path: str | Path, policy: WorldModalityPolicy, *, step: int = 0, epoch: int = 0,
                    optimizer: torch.optim.Optimizer | None = None, trainer_state: dict[str, Any] | None = None) -> Path:
    """Write into a temporary sibling folder, then rename: a kill mid-write leaves the old checkpoints intact."""
    final = Path(path)
    tmp = _atomic_dir(final)
    state = policy.state_dict()
    tensors = _unshared({k: state[k].detach().cpu().contiguous() for k in checkpoint_keys(policy)})
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    policy.cfg.to_json(tmp / "config.json")
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
    (tmp / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")
    tok = policy.backbone.tokenizer
    if hasattr(tok, "to_str"):
        (tmp / "tokenizer.json").write_text(tok.to_str())
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({**(trainer_state or {}), "optimizer": opt_meta}, indent=2) + "\n")
    (tmp / DONE_MARKER).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def is_complete(path: str | Path) -> bool:
    return (Path(path) / DONE_MARKER).exists()


def _read_tensors(path: Path, header_only: bool = False) -> dict[str, torch.Tensor] | None:
    """Every tensor of a safetensors file, or with `header_only` just a check that its header is whole
    (safetensors checks the header against the file's length)."""
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing.")
    try:
        if header_only:
            with safe_open(str(path), framework="pt"):
                return None
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e}") from e


def _read_meta(root: Path) -> dict:
    if not (root / "policy.json").exists() or not (root / "config.json").exists():
        raise CheckpointError(f"{root} is not a checkpoint folder: expected policy.json and config.json in it.")
    meta = json.loads((root / "policy.json").read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{root}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}.")
    return meta


def read_checkpoint_config(path: str | Path) -> ExperimentConfig:
    """The experiment config of a checkpoint, after checking its files are there and its tensor file's
    header is whole; builds nothing and reads no tensor (evaluation's parent process needs only this)."""
    root = Path(path)
    _read_meta(root)
    _read_tensors(root / "model.safetensors", header_only=True)
    return ExperimentConfig.from_json(root / "config.json")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> WorldModalityPolicy:
    """Rebuild the policy from its config and load every tensor; a missing or unexpected tensor
    is an error naming it (checkpoints without LoRA or ACT weights once acted at random).
    `device`: see policy/device.py (`auto` is CUDA when present); everything, the world encoder
    included, ends up there."""
    from ..world.encoder import build_world_encoder
    from .device import resolve_device
    from .factory import build_policy
    from .tokenizer import tokenizer_from_json

    device = resolve_device(device)

    root = Path(path)
    meta = _read_meta(root)
    cfg = ExperimentConfig.from_json(root / "config.json")
    tokenizer = tokenizer_from_json((root / "tokenizer.json").read_text()) if (root / "tokenizer.json").exists() else None
    enc = None
    if meta.get("world_encoder"):
        enc_cfg = {k: v for k, v in meta["world_encoder"].items() if k != "encoder_id"}
        # Built where the policy will run (the encoder's own "auto" would load pretrained weights
        # onto the GPU even for a CPU load).
        enc = build_world_encoder(**enc_cfg, device=device)
    policy = build_policy(cfg, PolicyShapes(**meta["shapes"]), tokenizer=tokenizer, world_encoder=enc)
    policy.data_info = dict(meta.get("data_info", policy.data_info))
    tensors = _read_tensors(root / "model.safetensors")
    expected = set(checkpoint_keys(policy))
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {root} does not match the policy its config builds: "
            f"missing tensors {missing[:10]}{' …' if len(missing) > 10 else ''}; "
            f"unexpected tensors {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}."
        )
    try:
        policy.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {root}: tensor shapes do not match the policy: {e}") from e
    saved_fp, loaded_fp = meta.get("frozen_backbone_fingerprint"), frozen_backbone_fingerprint(policy)
    if saved_fp and loaded_fp != saved_fp:
        raise CheckpointError(
            f"checkpoint {root}: the frozen backbone loaded from {cfg.policy.backbone_path!r} has weights fingerprint "
            f"{loaded_fp!r}, but the checkpoint was trained on {saved_fp!r}. The checkpoint stores only the trained "
            "weights (LoRA, heads); point backbone_path at the model revision it was trained with.")
    if enc is not None:
        enc.refresh_id()
        saved_id = meta["world_encoder"].get("encoder_id")
        if saved_id and enc.encoder_id != saved_id:
            raise CheckpointError(f"checkpoint {root}: world encoder weights hash to {enc.encoder_id!r}, policy.json says {saved_id!r}.")
    return policy.to(device).eval()


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    root = Path(path)
    state = json.loads((root / "trainer_state.json").read_text())
    tensors = _read_tensors(root / "optimizer.safetensors")
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    return state


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}
