"""Frozen world encoders (V-JEPA 2 family) that turn an m-frame window into one latent vector (or N spatial tokens)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Same constants as transformers' IMAGENET_DEFAULT_MEAN/STD, used by VJEPA2VideoProcessor.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VJEPA2VideoProcessor (transformers 5.x) resizes the shortest edge to int(crop_size * 256 / 224)
# whatever its config's "size" says, then center-crops crop_size.
RESIZE_RATIO = 256 / 224
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")

TINY_NAME = "tiny-vjepa2"
PRETRAINED_NAME = "vjepa2"
STATE_NAME = "env_state"  # the privileged object state, not a video encoder (world/env_state.py)
KNOWN_NAMES = (TINY_NAME, PRETRAINED_NAME, STATE_NAME)


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


@dataclass(frozen=True)
class VJEPA2Processing:
    """The video processor's steps for a pretrained checkpoint: resize, center crop, normalize."""

    crop_size: int
    shortest_edge: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_crop(cls, crop_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> "VJEPA2Processing":
        return cls(int(crop_size), int(crop_size * RESIZE_RATIO), tuple(map(float, mean)), tuple(map(float, std)))

    def to_dict(self) -> dict[str, Any]:
        return {"crop_size": self.crop_size, "shortest_edge": self.shortest_edge,
                "mean": list(self.mean), "std": list(self.std)}


def _processor_config(pretrained_path: str) -> tuple[str, dict] | None:
    """The checkpoint's video processor config (local folder or hub cache), if it has one."""
    for fname in PROCESSOR_FILES:
        if os.path.isdir(pretrained_path):
            f = os.path.join(pretrained_path, fname)
            found = f if os.path.isfile(f) else None
        else:
            from transformers.utils import cached_file

            found = cached_file(pretrained_path, fname, local_files_only=True,
                                _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False)
        if found:
            with open(found) as fh:
                return found, json.load(fh)
    return None


def read_processing(pretrained_path: str, model_crop_size: int) -> VJEPA2Processing:
    """What VJEPA2VideoProcessor.from_pretrained(pretrained_path) would do, without torchvision.

    crop_size, mean and std come from the processor config when the checkpoint has one, else the
    processor's defaults with the model's crop_size; the resize target always follows crop_size.
    """
    found = _processor_config(pretrained_path)
    if found is None:
        return VJEPA2Processing.for_crop(model_crop_size)
    where, cfg = found
    crop = cfg.get("crop_size", model_crop_size)
    if isinstance(crop, dict):
        if crop.get("height") != crop.get("width", crop.get("height")):
            raise ValueError(f"{where}: crop_size {crop} is not square; the world encoder expects a square crop")
        crop = crop["height"]
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if cfg.get(flag, True) is not True:
            raise ValueError(f"{where}: {flag}={cfg[flag]!r} is not supported (expected true)")
    resample = cfg.get("resample", 2)
    if resample != 2:  # PIL BILINEAR
        raise ValueError(f"{where}: resample={resample!r} is not supported (expected 2, bilinear)")
    rescale = float(cfg.get("rescale_factor", 1 / 255))
    if abs(rescale - 1 / 255) > 1e-9:
        raise ValueError(f"{where}: rescale_factor={rescale} is not supported (expected 1/255)")
    return VJEPA2Processing.for_crop(int(crop), cfg.get("image_mean", IMAGENET_MEAN), cfg.get("image_std", IMAGENET_STD))


def resize_output_size(h: int, w: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to shortest_edge (transformers' rounding: int())."""
    if w <= h:
        return int(shortest_edge * h / w), shortest_edge
    return shortest_edge, int(shortest_edge * w / h)


def vjepa2_resize_crop(x: torch.Tensor, shortest_edge: int, crop: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, crop, crop) on the CPU, as the video processor does it:
    antialiased bilinear resize of the shortest edge, then a center crop.

    The resize runs on uint8 on the CPU, where the processor runs by default: torchvision then
    takes torch's uint8 kernel (on AVX2/AVX512 machines), which rounds like PIL. A float resize
    rounded afterwards differs by one level on about a fifth of the pixels.
    """
    h, w = x.shape[-2:]
    size = resize_output_size(h, w, shortest_edge)
    x = x.cpu()
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    h, w = size
    if crop > h or crop > w:
        raise ValueError(f"resized frames {h}x{w} are smaller than the crop {crop}")
    top, left = int((h - crop) / 2.0), int((w - crop) / 2.0)
    return x[..., top : top + crop, left : left + crop]


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
            raise ValueError(
                f"image_size={image_size} must be a multiple of patch_size={cfg.patch_size}"
            )
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

    def train(self, mode: bool = True) -> "WorldEncoder":
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
            raise ValueError(f"encoder output has {n} tokens, expected {t}x{p}x{p} (time x rows x columns) for "
                             f"m={self.num_frames} frames at {self.image_size} px")
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


def resolve_placement(name: str, dtype: torch.dtype | str, device: str | torch.device) -> tuple[torch.dtype, torch.device]:
    """"auto" device: CUDA for pretrained encoders when present (a ViT-L on CPU is far too slow for a
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
            raise ValueError(f"world encoder {STATE_NAME!r} is a state vector with no spatial token map: "
                             f"world_tokens must be 1, got {world_tokens}")

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
