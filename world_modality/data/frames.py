"""Frame sizes a dataset records and the size evaluation renders at; the resize itself is `images.resize_frames`."""

from __future__ import annotations


def native_frame_sizes(features: dict, keys) -> int | dict[str, list[int]]:
    """The size a dataset's cameras were recorded at, from meta/info.json `features`, as a checkpoint
    records it (`data_info["frame_size"]`): one int when every camera is square and the same size,
    else {camera: [height, width]}. Evaluation renders at this size and resizes as training did."""
    sizes = {}
    for key in dict.fromkeys(keys):
        feat = features.get(key) or {}
        shape, names = list(feat.get("shape") or []), feat.get("names")
        if len(shape) != 3:
            raise ValueError(
                f"camera {key!r}: meta/info.json features give shape {shape}, expected [height, width, 3]."
            )
        # LeRobot writes (height, width, channels); names say so when a conversion stores channels first.
        if isinstance(names, list) and "height" in names and "width" in names:
            sizes[key] = [int(shape[names.index("height")]), int(shape[names.index("width")])]
        else:
            sizes[key] = [int(shape[0]), int(shape[1])]
    distinct = {tuple(s) for s in sizes.values()}
    if len(distinct) == 1:
        ((h, w),) = distinct
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
