"""Frozen world encoders (V-JEPA 2 family) that turn an m-frame window into one latent vector (or N spatial tokens)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .vjepa2_loading import _dtype_from, _dtype_name, load_pretrained, tiny_vjepa2_config, weights_sha256
from .vjepa2_processing import IMAGENET_MEAN, IMAGENET_STD, VJEPA2Processing, read_processing, vjepa2_resize_crop

TINY_NAME = "tiny-vjepa2"
PRETRAINED_NAME = "vjepa2"
STATE_NAME = "env_state"  # the privileged object state, not a video encoder (world/env_state.py)
KNOWN_NAMES = (TINY_NAME, PRETRAINED_NAME, STATE_NAME)


class WorldEncoder(nn.Module):
    """Frozen video encoder: (B, m, H, W, 3) uint8 windows -> (B, N·D) float32 latents.

    Only the encoder's token outputs are used (the V-JEPA predictor is skipped). world_tokens N = 1
    (default): the mean over all space-time tokens, D values. N > 1 (a perfect square): the token map
    averaged over time, then adaptive-average-pooled over the patch grid to a √N×√N grid; the latent
    is those N tokens concatenated in row-major grid order (token i is values [i·D, (i+1)·D)), so
    caches, statistics and memory ablations handle it as one vector of latent_dim = N·D.
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
        processing: VJEPA2Processing | None = None,
        world_tokens: int = 1,
    ):
        super().__init__()
        cfg = model.config
        if num_frames < 1 or num_frames % cfg.tubelet_size != 0:
            raise ValueError(
                f"num_frames={num_frames} (latent_suffix m{num_frames}) must be a positive multiple of "
                f"the encoder's tubelet_size={cfg.tubelet_size}: its frames are embedded "
                f"{cfg.tubelet_size} at a time"
            )
        if processing is not None and processing.crop_size != image_size:
            raise ValueError(f"image_size={image_size} differs from the processor's crop_size={processing.crop_size}")
        if image_size % cfg.patch_size != 0:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={cfg.patch_size}")
        grid, side = image_size // cfg.patch_size, math.isqrt(max(int(world_tokens), 0))
        if world_tokens < 1 or side * side != world_tokens or side > grid:
            raise ValueError(
                f"world_tokens={world_tokens} must be a perfect square whose side is at most the encoder's "
                f"{grid}x{grid} patch grid (image_size {image_size} / patch_size {cfg.patch_size}): "
                f"1, 4, ..., {grid * grid}"
            )
        self.model = model
        self.name = name
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.world_tokens = int(world_tokens)
        self.token_dim = int(cfg.hidden_size)  # D: one token's width
        self.latent_dim = self.world_tokens * self.token_dim
        self._grid = (self.num_frames // cfg.tubelet_size, grid)  # (time steps, patches per side) of the token map
        self.seed = seed
        self.pretrained_path = pretrained_path
        self.processing = processing
        mean = processing.mean if processing else IMAGENET_MEAN
        std = processing.std if processing else IMAGENET_STD
        self.register_buffer("_mean", torch.tensor(mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 1, 3, 1, 1), persistent=False)
        self._freeze()
        self.refresh_id()

    # -- frozen by construction -------------------------------------------------------------
    def _freeze(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> WorldEncoder:
        # The encoder is never trained; a parent module's .train() must not flip it (dropout).
        return super().train(False)

    def refresh_id(self) -> str:
        """Recompute encoder_id from the current weights (call after loading new weights)."""
        digest = weights_sha256(self.model)
        if self.processing is not None:
            # Another preprocessing gives other latents: it is part of the identity.
            digest = hashlib.sha256((digest + json.dumps(self.processing.to_dict())).encode()).hexdigest()
        short = digest[:12]
        # N > 1 gives other latents from the same weights: part of the identity (and so of the latent cache's key).
        # N = 1 keeps the id it had before world_tokens existed, so existing caches and checkpoints stay valid.
        tokens = f"-t{self.world_tokens}" if self.world_tokens != 1 else ""
        self.encoder_id = f"{self.name}-m{self.num_frames}-s{self.image_size}{tokens}-{short}"
        return self.encoder_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- inference --------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, m, H, W, 3) -> normalized float (B, m, 3, S, S) on the encoder's device.

        Pretrained encoders see exactly what their own video processor would give them
        (see vjepa2_preprocess); the tiny default resizes straight to S.
        """
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
        x = x.permute(0, 1, 4, 2, 3).reshape(b * m, 3, h, w)
        s = self.image_size
        if self.processing is not None:
            x = vjepa2_resize_crop(x, self.processing.shortest_edge, s).to(self.device).float()
        else:
            x = x.to(self.device).float()
            if (h, w) != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=False)
        x = x.div_(255.0).reshape(b, m, 3, s, s)
        return (x - self._mean) / self._std

    @torch.no_grad()
    def encode(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, m, H, W, 3) -> (B, N·D) float32: the mean over all encoder output tokens (N = 1),
        or N grid cells of the time-averaged token map, concatenated (see the class docstring)."""
        x = self.preprocess(frames).to(self.dtype)
        out = self.model(pixel_values_videos=x, skip_predictor=True)
        if self.world_tokens == 1:
            # Exactly the reduction used before world_tokens existed: latents and caches stay bit-identical.
            return out.last_hidden_state.float().mean(dim=1)
        return self.pool_tokens(out.last_hidden_state.float()).flatten(1)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, T'·P·P, D), tokens in (time, row, column) order as V-JEPA 2's patch embedding
        flattens them -> (B, N, D): mean over time, adaptive average pooling of the P×P grid to √N×√N."""
        (t, p), side = self._grid, math.isqrt(self.world_tokens)
        b, n, d = tokens.shape
        if n != t * p * p:
            raise ValueError(
                f"encoder output has {n} tokens, expected {t}x{p}x{p} (time x rows x columns) for "
                f"m={self.num_frames} frames at {self.image_size} px"
            )
        grid = tokens.view(b, t, p, p, d).mean(dim=1).permute(0, 3, 1, 2)  # (B, D, P, P)
        pooled = F.adaptive_avg_pool2d(grid, side)  # (B, D, √N, √N)
        return pooled.permute(0, 2, 3, 1).reshape(b, self.world_tokens, d)

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
            "world_tokens": self.world_tokens,
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
    ) -> WorldEncoder:
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


def resolve_placement(
    name: str, dtype: torch.dtype | str, device: str | torch.device
) -> tuple[torch.dtype, torch.device]:
    """ "auto" device: CUDA for pretrained encoders when present (a ViT-L on CPU is far too slow for a
    dataset), else CPU. "auto" dtype: bfloat16 for pretrained encoders on CUDA, else float32 (the
    tiny encoder stays float32 everywhere so its identity does not depend on the machine)."""
    if str(device) == "auto":
        device = "cuda" if name == PRETRAINED_NAME and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if str(dtype) == "auto":
        dtype = torch.bfloat16 if name == PRETRAINED_NAME and device.type == "cuda" else torch.float32
    return _dtype_from(dtype), device


def build_world_encoder(
    name: str = TINY_NAME,
    num_frames: int = 4,
    image_size: int | None = None,
    seed: int | None = 0,
    pretrained_path: str | None = None,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device = "auto",
    world_tokens: int = 1,
    **state: Any,
) -> WorldEncoder:
    """Build a frozen world encoder.

    name="tiny-vjepa2": random VJEPA2Model from tiny_vjepa2_config, seeded (global RNG untouched);
    image_size defaults to 64, frames are resized straight to it. name="vjepa2":
    VJEPA2Model.from_pretrained(pretrained_path, local_files_only=True) (never a download); frames
    go through the checkpoint's own video processing (read_processing), image_size is its crop.
    dtype/device "auto": see resolve_placement. name="env_state": the privileged object state
    (world/env_state.py's EnvStateEncoder, not a WorldEncoder), unfitted or from its config_dict's
    `state` fields (names, mean, std). world_tokens: N spatial tokens per latent (WorldEncoder); the
    env_state encoder has no token map and takes only 1.
    """
    if name == STATE_NAME:
        from .env_state import build_env_state_encoder

        if world_tokens != 1:
            raise ValueError(
                f"world encoder {STATE_NAME!r} is a state vector with no spatial token map: "
                f"world_tokens must be 1, got {world_tokens}"
            )

        return build_env_state_encoder(num_frames, pretrained_path, device=device, **state)
    if state:
        raise TypeError(f"build_world_encoder got unexpected arguments {sorted(state)} for world encoder {name!r}")
    torch_dtype, torch_device = resolve_placement(name, dtype, device)
    processing = None
    if name == TINY_NAME:
        if pretrained_path is not None:
            raise ValueError(f"{TINY_NAME!r} is randomly initialised; use name={PRETRAINED_NAME!r} for weights")
        from transformers import VJEPA2Model

        image_size = 64 if image_size is None else image_size
        seed = 0 if seed is None else int(seed)
        tubelet = tiny_vjepa2_config(2, 16).tubelet_size
        if num_frames < 1 or num_frames % tubelet != 0:
            raise ValueError(f"num_frames={num_frames} must be a positive multiple of tubelet_size={tubelet}")
        config = tiny_vjepa2_config(num_frames, image_size)
        # fork_rng: seeding for a deterministic init must not perturb the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VJEPA2Model(config)
        model = model.to(torch_dtype)
    elif name == PRETRAINED_NAME:
        if not pretrained_path:
            raise ValueError(f"name={PRETRAINED_NAME!r} needs pretrained_path (a local path or hub-cache id)")
        model = load_pretrained(str(pretrained_path), torch_dtype)
        processing = read_processing(str(pretrained_path), int(model.config.crop_size))
        if image_size is not None and int(image_size) != processing.crop_size:
            raise ValueError(
                f"image_size={image_size} but the pretrained encoder at {pretrained_path!r} takes "
                f"{processing.crop_size}x{processing.crop_size} crops; leave image_size unset"
            )
        image_size = processing.crop_size
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
        processing=processing,
        world_tokens=int(world_tokens),
    )
    return enc.to(torch_device)
