"""Frozen world encoders (V-JEPA 2 family) that turn an m-frame window into one latent vector."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Same constants as transformers' IMAGENET_DEFAULT_MEAN/STD, used by VJEPA2VideoProcessor.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TINY_NAME = "tiny-vjepa2"
PRETRAINED_NAME = "vjepa2"
KNOWN_NAMES = (TINY_NAME, PRETRAINED_NAME)


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


class WorldEncoder(nn.Module):
    """Frozen video encoder: (B, m, H, W, 3) uint8 windows -> (B, D) float32 latents.

    Only the encoder's token outputs are used (the V-JEPA predictor is skipped), mean-pooled
    over all space-time tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        num_frames: int,
        image_size: int,
        seed: int | None,
        pretrained_path: str | None,
    ):
        super().__init__()
        cfg = model.config
        if num_frames < 1 or num_frames % cfg.tubelet_size != 0:
            raise ValueError(
                f"num_frames={num_frames} must be a positive multiple of the encoder's "
                f"tubelet_size={cfg.tubelet_size}"
            )
        if image_size % cfg.patch_size != 0:
            raise ValueError(
                f"image_size={image_size} must be a multiple of patch_size={cfg.patch_size}"
            )
        self.model = model
        self.name = name
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.latent_dim = int(cfg.hidden_size)
        self.seed = seed
        self.pretrained_path = pretrained_path
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)
        self._freeze()
        self.refresh_id()

    # -- frozen by construction -------------------------------------------------------------
    def _freeze(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "WorldEncoder":
        # The encoder is never trained; a parent module's .train() must not flip it (dropout).
        return super().train(False)

    def refresh_id(self) -> str:
        """Recompute encoder_id from the current weights (call after loading new weights)."""
        short = weights_sha256(self.model)[:12]
        self.encoder_id = f"{self.name}-m{self.num_frames}-s{self.image_size}-{short}"
        return self.encoder_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, m, H, W, 3) -> normalized float (B, m, 3, S, S) on the encoder's device."""
        x = torch.as_tensor(frames) if isinstance(frames, np.ndarray) else frames
        if x.dtype != torch.uint8:
            raise TypeError(f"frames must be uint8 (0..255), got {x.dtype}")
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"frames must have shape (B, m, H, W, 3), got {tuple(x.shape)}")
        if x.shape[1] != self.num_frames:
            raise ValueError(
                f"window has {x.shape[1]} frames but encoder {self.encoder_id} expects m={self.num_frames}"
            )
        b, m, h, w, _ = x.shape
        x = x.to(self.device).permute(0, 1, 4, 2, 3).reshape(b * m, 3, h, w).float().div_(255.0)
        s = self.image_size
        if (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=False)
        x = x.reshape(b, m, 3, s, s)
        return (x - self._mean) / self._std

    @torch.no_grad()
    def encode(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, m, H, W, 3) -> (B, D) float32, mean over all encoder output tokens."""
        x = self.preprocess(frames).to(self.dtype)
        out = self.model(pixel_values_videos=x, skip_predictor=True)
        return out.last_hidden_state.float().mean(dim=1)

    def forward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.encode(frames)

    # -- checkpointing ----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """Everything build_world_encoder needs, plus encoder_id so a rebuild can be verified."""
        return {
            "name": self.name,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "seed": self.seed,
            "pretrained_path": self.pretrained_path,
            "dtype": _dtype_name(self.dtype),
            "encoder_id": self.encoder_id,
        }

    def state_dict_for_checkpoint(self) -> dict[str, torch.Tensor] | None:
        """Weights to embed in a policy checkpoint; None for pretrained encoders (reload from path)."""
        if self.pretrained_path is not None:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    @classmethod
    def from_checkpoint(
        cls,
        config: dict[str, Any],
        weights: dict[str, torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
    ) -> "WorldEncoder":
        """Rebuild from config_dict() (+ weights); raises if the result is not the saved encoder."""
        cfg = dict(config)
        expected_id = cfg.pop("encoder_id", None)
        enc = build_world_encoder(**cfg, device=device)
        if weights is not None:
            enc.model.load_state_dict(weights, strict=True)
            enc.refresh_id()
        if expected_id is not None and enc.encoder_id != expected_id:
            raise ValueError(
                f"rebuilt world encoder has encoder_id {enc.encoder_id!r} but the checkpoint "
                f"expects {expected_id!r}: different weights, m or image size"
            )
        return enc


def _load_pretrained(pretrained_path: str, dtype: torch.dtype):
    from transformers import VJEPA2Model

    try:
        return VJEPA2Model.from_pretrained(pretrained_path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        where = "local directory" if os.path.isdir(pretrained_path) else "path or hub-cache id"
        raise FileNotFoundError(
            f"could not load V-JEPA 2 weights from {where} {pretrained_path!r} "
            f"(local files only; nothing is downloaded): {e}"
        ) from e


def build_world_encoder(
    name: str = TINY_NAME,
    num_frames: int = 4,
    image_size: int | None = None,
    seed: int | None = 0,
    pretrained_path: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> WorldEncoder:
    """Build a frozen world encoder.

    name="tiny-vjepa2": random VJEPA2Model from tiny_vjepa2_config, seeded (global RNG untouched);
    image_size defaults to 64. name="vjepa2": VJEPA2Model.from_pretrained(pretrained_path,
    local_files_only=True); image_size defaults to the checkpoint's crop_size.
    """
    torch_dtype = _dtype_from(dtype)
    if name == TINY_NAME:
        if pretrained_path is not None:
            raise ValueError(f"{TINY_NAME!r} is randomly initialised; use name={PRETRAINED_NAME!r} for weights")
        from transformers import VJEPA2Model

        image_size = 64 if image_size is None else image_size
        seed = 0 if seed is None else int(seed)
        tubelet = tiny_vjepa2_config(2, 16).tubelet_size
        if num_frames < 1 or num_frames % tubelet != 0:
            raise ValueError(
                f"num_frames={num_frames} must be a positive multiple of tubelet_size={tubelet}"
            )
        config = tiny_vjepa2_config(num_frames, image_size)
        # fork_rng: seeding for a deterministic init must not perturb the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VJEPA2Model(config)
        model = model.to(torch_dtype)
    elif name == PRETRAINED_NAME:
        if not pretrained_path:
            raise ValueError(f"name={PRETRAINED_NAME!r} needs pretrained_path (a local path or hub-cache id)")
        model = _load_pretrained(str(pretrained_path), torch_dtype)
        image_size = int(model.config.crop_size) if image_size is None else image_size
        seed = None
    else:
        raise ValueError(f"unknown world encoder {name!r}; known: {', '.join(KNOWN_NAMES)}")
    enc = WorldEncoder(
        model,
        name=name,
        num_frames=num_frames,
        image_size=int(image_size),
        seed=seed,
        pretrained_path=None if pretrained_path is None else str(pretrained_path),
    )
    return enc.to(device)
