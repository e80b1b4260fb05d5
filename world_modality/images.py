"""The one image resize: uint8 frames to the square size the models see, shared by the frame
cache (training data) and the policy's preprocessor (training and evaluation observations)."""

from __future__ import annotations

import numpy as np


def resize_frames(frames: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 (..., H, W, 3) -> uint8 (..., size, size, 3): bilinear with antialiasing, rounded to
    the nearest integer. Frames already at size×size (or size None) are returned unchanged."""
    a = np.asarray(frames)
    if a.dtype != np.uint8 or a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (..., H, W, 3), got {a.dtype} {a.shape}")
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")
    h, w = a.shape[-3:-1]
    if size is None or (h, w) == (size, size):
        return a
    # Imported here: readers of a dataset at its own size (e.g. demo generation workers) need no torch.
    import torch
    import torch.nn.functional as F

    lead = a.shape[:-3]
    x = torch.from_numpy(np.ascontiguousarray(a.reshape((-1, h, w, 3)))).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(int(size), int(size)), mode="bilinear", antialias=True, align_corners=False)
    out = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return out.reshape(lead + (int(size), int(size), 3))
