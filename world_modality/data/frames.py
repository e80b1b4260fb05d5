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


def native_frame_sizes(features: dict, keys) -> int | dict[str, list[int]]:
    """The size a dataset's cameras were recorded at, from meta/info.json `features`, as a checkpoint
    records it (`data_info["frame_size"]`): one int when every camera is square and the same size,
    else {camera: [height, width]}. Evaluation renders at this size and resizes as training did."""
    sizes = {}
    for key in dict.fromkeys(keys):
        feat = features.get(key) or {}
        shape, names = list(feat.get("shape") or []), feat.get("names")
        if len(shape) != 3:
            raise ValueError(f"camera {key!r}: meta/info.json features give shape {shape}, expected [height, width, 3].")
        # LeRobot writes (height, width, channels); names say so when a conversion stores channels first.
        if isinstance(names, list) and "height" in names and "width" in names:
            sizes[key] = [int(shape[names.index("height")]), int(shape[names.index("width")])]
        else:
            sizes[key] = [int(shape[0]), int(shape[1])]
    distinct = {tuple(s) for s in sizes.values()}
    if len(distinct) == 1:
        (h, w), = distinct
        if h == w:
            return h
    return sizes


def render_size(frame_size: int | dict | None, key: str, fallback: int) -> tuple[int, int]:
    """(height, width) to render camera `key` at, from a checkpoint's `data_info["frame_size"]`;
    checkpoints written before it was recorded render at `fallback` (the training image size)."""
    if frame_size is None:
        return int(fallback), int(fallback)
    if isinstance(frame_size, dict):
        if key not in frame_size:
            raise ValueError(f"the checkpoint records frame sizes for cameras {sorted(frame_size)}, not {key!r}.")
        h, w = frame_size[key]
        return int(h), int(w)
    return int(frame_size), int(frame_size)
