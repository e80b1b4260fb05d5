"""Loading V-JEPA 2 models: the tiny random config for CPU runs, pretrained weights from local files, and the
dtype names and weight hash that identify an encoder."""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn


def _dtype_from(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    resolved = getattr(torch, name, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weights_sha256(module: nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, dtypes, bytes), in key order."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        # View as raw bytes so bfloat16 (which numpy lacks) hashes too.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tiny_vjepa2_config(num_frames: int, image_size: int):
    """A VJEPA2Config small enough for CPU tests: same classes as the real model, toy sizes."""
    from transformers import VJEPA2Config

    return VJEPA2Config(
        crop_size=image_size,
        patch_size=16,
        frames_per_clip=num_frames,
        tubelet_size=2,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2.0,
        num_pooler_layers=1,
        pred_hidden_size=32,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
        pred_mlp_ratio=2.0,
        pred_num_mask_tokens=2,
    )


def load_pretrained(pretrained_path: str, dtype: torch.dtype):
    from transformers import VJEPA2Model

    try:
        return VJEPA2Model.from_pretrained(pretrained_path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        where = "local directory" if os.path.isdir(pretrained_path) else "path or hub-cache id"
        raise FileNotFoundError(
            f"could not load V-JEPA 2 weights from {where} {pretrained_path!r} "
            f"(local files only; nothing is downloaded): {e}"
        ) from e
