"""Encoding each frame's m-frame window with the world encoder, one batch of windows at a time (the latent cache,
latent_cache.py, keeps the result)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm


class WindowEncoder(Protocol):
    """What encoding and caching need of a world encoder (encoder.py's WorldEncoder): named here, as the
    encoder module builds the env_state encoder, which reads the cache."""

    encoder_id: str
    num_frames: int
    latent_dim: int
    dtype: torch.dtype

    def encode(self, windows: torch.Tensor) -> torch.Tensor: ...


def _check_past_rows(past_rows: np.ndarray, n_frames: int, m: int) -> np.ndarray:
    rows = np.asarray(past_rows)
    if rows.ndim != 2 or rows.shape[1] != m:
        raise ValueError(f"past_rows must have shape (N, m={m}), got {rows.shape}")
    if not np.issubdtype(rows.dtype, np.integer):
        raise TypeError(f"past_rows must be integer indices, got {rows.dtype}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_frames):
        raise IndexError(f"past_rows index range [{rows.min()}, {rows.max()}] outside the {n_frames} frames given")
    return rows.astype(np.int64, copy=False)


def encode_latents(
    frames: np.ndarray,
    past_rows: np.ndarray,
    encoder: WindowEncoder,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """Latent of every row's window: out[i] = encoder.encode(frames[past_rows[i]]); (N, D) float32.

    frames may be a memory map (the frame cache): it is read one batch of windows at a time."""
    frames = np.asarray(frames)  # a view for a memmap, never a copy
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    rows = _check_past_rows(past_rows, len(frames), encoder.num_frames)
    out = np.empty((len(rows), encoder.latent_dim), dtype=np.float32)
    bar = tqdm(total=len(rows), desc=f"encode {encoder.encoder_id}", unit="win", disable=not progress)
    try:
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            windows = frames[idx]  # (b, m, H, W, 3)
            out[start : start + len(idx)] = encoder.encode(torch.from_numpy(windows)).cpu().numpy()
            bar.update(len(idx))
    finally:
        bar.close()
    return out
