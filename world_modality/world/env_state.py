"""The privileged world encoder `env_state`: the simulator's object state as the world latent (the upper bound
of what any image encoder could know of the scene).

A window's latent is its m environment-state vectors (`observation.environment_state`, layout in
data/env_state.py), each normalised by the per-dimension mean and std of the training rows, concatenated oldest
first: latent_dim = m * D. Windows are the image encoders' (m frames `frame_stride` apart, frame 0 repeated
before an episode starts), so the Prophet, the world loss and every memory ablation run unchanged.

Simpler than the image path: encoding is an index and an affine map, so latents are computed in memory each
time (`env_state_latents`) instead of going through the on-disk latent cache. The statistics and the layout's
names are the encoder's identity; a checkpoint stores them in policy.json (`config_dict`), and closed-loop
evaluation reads the same vector from the simulator (`LiberoEnv.environment_state`) at the frames an image
encoder would have rendered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.env_state import ENV_STATE_KEY, read_env_state
from .latent_cache import LatentCache, latent_stats

ENV_STATE_NAME = "env_state"
# A dimension that varies less than this over the training rows (a drawer nobody opens, in m or rad) carries
# nothing the policy could learn from; it is set to 0 rather than divided by ~0, so that settling noise of
# 1e-6 in evaluation cannot become a latent of thousands of standard deviations.
MIN_STD = 1e-4


class EnvStateEncoder(nn.Module):
    """(B, m, D) environment states -> (B, m*D) float32 latents: each frame normalised, then concatenated.

    Built unfitted from a config (`names`, `mean`, `std` None); `fit` sets them from the training rows. Frozen:
    it has no parameters, and its statistics are non-persistent buffers stored in policy.json, not tensors."""

    name = ENV_STATE_NAME

    def __init__(
        self,
        num_frames: int,
        names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be >= 1")
        self.num_frames = int(num_frames)
        # What the image encoders' callers read: no image size, seed, weights path or preprocessing.
        self.image_size, self.seed, self.pretrained_path, self.processing = None, None, None, None
        self.names: list[str] | None = None
        self.register_buffer("mean", torch.zeros(0), persistent=False)
        self.register_buffer("std", torch.ones(0), persistent=False)
        self.register_buffer("_scale", torch.ones(0), persistent=False)
        self.encoder_id = f"{ENV_STATE_NAME}-m{self.num_frames}-sNone-unfitted"
        if (names is None) != (mean is None) or (mean is None) != (std is None):
            raise ValueError("an env_state encoder needs names, mean and std together (or none of them, unfitted)")
        if names is not None:
            self._set(names, np.asarray(mean, np.float64), np.asarray(std, np.float64))
        super().train(False)

    def train(self, mode: bool = True) -> EnvStateEncoder:
        return super().train(False)  # frozen, like the image encoders

    # -- statistics -------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.names is not None

    def _set(self, names: Sequence[str], mean: np.ndarray, std: np.ndarray) -> None:
        names = [str(n) for n in names]
        if not (len(names) == mean.shape[-1] == std.shape[-1]) or mean.ndim != 1 or std.ndim != 1:
            raise ValueError(
                f"env_state encoder: {len(names)} names, mean {mean.shape}, std {std.shape}; "
                f"expected one of each per dimension"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std < 0).any():
            raise ValueError("env_state encoder: mean and std must be finite and std >= 0")
        device = self.mean.device
        self.names = names
        # float32 values, so that a JSON round trip (policy.json) gives back exactly these statistics.
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device)
        self._scale = torch.where(self.std >= MIN_STD, 1.0 / self.std.clamp_min(MIN_STD), torch.zeros_like(self.std))
        self.refresh_id()

    def fit(self, values: np.ndarray, names: Sequence[str]) -> EnvStateEncoder:
        """Per-dimension mean and std (float64 accumulation) of the training rows' states (N, D)."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2 or len(v) == 0:
            raise ValueError(f"fit needs (N, D) training states with N >= 1, got {v.shape}")
        self._set(names, v.mean(0), v.std(0))
        return self

    def refresh_id(self) -> str:
        ident = json.dumps([self.names, self.mean.tolist(), self.std.tolist()])
        digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
        self.encoder_id = f"{ENV_STATE_NAME}-m{self.num_frames}-sNone-{digest}"
        return self.encoder_id

    @property
    def state_dim(self) -> int:
        self._need_fit()
        return len(self.names)

    @property
    def latent_dim(self) -> int:
        return self.num_frames * self.state_dim

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _need_fit(self) -> None:
        if not self.fitted:
            raise ValueError(
                "the env_state world encoder has no statistics yet: it is fitted on the training rows "
                "of a dataset with observation.environment_state (pipeline.prepare_data)"
            )

    # -- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, states: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, m, D) states (any float dtype) -> (B, m*D) float32 on the encoder's device."""
        self._need_fit()
        x = torch.as_tensor(np.asarray(states) if not isinstance(states, torch.Tensor) else states)
        if x.ndim != 3 or x.shape[1] != self.num_frames or x.shape[2] != self.state_dim:
            raise ValueError(
                f"env_state windows must have shape (B, m={self.num_frames}, D={self.state_dim}), got {tuple(x.shape)}"
            )
        # Through float32 first: datasets store float32, and the simulator's vector is cast the same way.
        x = x.to(torch.float32).to(self.device)
        return ((x - self.mean) * self._scale).reshape(x.shape[0], -1)

    def forward(self, states):
        return self.encode(states)

    # -- checkpointing ----------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """Everything build_world_encoder needs (the statistics included), plus encoder_id for verification."""
        self._need_fit()
        return {
            "name": ENV_STATE_NAME,
            "num_frames": self.num_frames,
            "image_size": None,
            "seed": None,
            "pretrained_path": None,
            "dtype": "float32",
            "names": list(self.names),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "encoder_id": self.encoder_id,
        }

    def state_dict_for_checkpoint(self) -> None:
        return None  # the statistics live in config_dict


def build_env_state_encoder(
    num_frames: int,
    pretrained_path: str | None = None,
    names=None,
    mean=None,
    std=None,
    device: str | torch.device = "cpu",
) -> EnvStateEncoder:
    """The `env_state` encoder, unfitted or from config_dict(); image size, seed and dtype do not apply."""
    if pretrained_path:
        raise ValueError(f"world encoder {ENV_STATE_NAME!r} has no weights; got pretrained_path={pretrained_path!r}")
    enc = EnvStateEncoder(num_frames, names, mean, std)
    return enc.to("cpu" if str(device) == "auto" else device)


def is_env_state_encoder(encoder) -> bool:
    return getattr(encoder, "name", None) == ENV_STATE_NAME


def env_state_latents(
    dataset, encoder: EnvStateEncoder, past_rows: np.ndarray, train_rows: np.ndarray, frame_stride: int
) -> LatentCache:
    """Every row's window latent from the dataset's `observation.environment_state`, in memory. An unfitted
    encoder (training) is fitted on `train_rows` first; a fitted one (a checkpoint's) must have the dataset's
    layout. A dataset without the key is a one-line error naming the key and the dataset."""
    values, names = read_env_state(dataset)
    if not encoder.fitted:
        encoder.fit(values[np.asarray(train_rows)], names)
    elif encoder.names != names:
        diff = sorted(set(encoder.names) ^ set(names))[:6]
        raise ValueError(
            f"dataset {dataset.root}: its {ENV_STATE_KEY!r} layout ({len(names)} entries) differs from "
            f"the one the env_state encoder was fitted on ({encoder.state_dim}); entries in one only: "
            f"{diff or 'none (another order)'}; expected the layout of the training data."
        )
    rows = np.asarray(past_rows)
    if rows.ndim != 2 or rows.shape[1] != encoder.num_frames:
        raise ValueError(f"windows of shape {rows.shape} for {encoder.encoder_id}, which takes m={encoder.num_frames}")
    latents = encoder.encode(values[rows]).cpu().numpy()
    mean, std = latent_stats(latents)
    meta = {
        "encoder_id": encoder.encoder_id,
        "num_frames": encoder.num_frames,
        "frame_stride": int(frame_stride),
        "image_key": ENV_STATE_KEY,
        "dataset_fingerprint": dataset.fingerprint(),
        "frame_size": None,
        "n_frames": int(latents.shape[0]),
        "latent_dim": int(latents.shape[1]),
    }
    return LatentCache(latents, mean, std, meta, None)
