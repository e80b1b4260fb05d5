"""The LeRobot v3 columns a dataset writer declares and fills: the info.json features, the parquet schema and the
cell encoders (PNG images, float lists)."""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import pyarrow as pa
from PIL import Image

from .video import pick_codec


class Columns(Protocol):
    """What these functions read of a writer (writer.py's LeRobotWriter): declared here, so this module, which the
    writer imports, imports nothing of the writer."""

    image_keys: list[str]
    image_size: int
    use_videos: bool
    fps: int
    state_dim: int
    action_dim: int
    state_names: list[str]
    action_names: list[str]
    extra_features: dict[str, list[str]]
    instruction_column: str | None


def png_cell(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def list_array(x: np.ndarray) -> pa.Array:
    # Row-wise conversion of (T,D) through Python lists is slow for long demonstrations; build offsets directly.
    t, d = x.shape
    offsets = pa.array(np.arange(0, t * d + 1, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1).astype(np.float32)))


def features(w: Columns) -> dict:
    """The `features` entry of meta/info.json for a writer's columns."""
    feats: dict = {}
    s = w.image_size
    for key in w.image_keys:
        if w.use_videos:
            feats[key] = {
                "dtype": "video",
                "shape": [s, s, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": s,
                    "video.width": s,
                    "video.codec": "h264" if pick_codec() == "libx264" else "mpeg4",
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": w.fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        else:
            feats[key] = {"dtype": "image", "shape": [s, s, 3], "names": ["height", "width", "channel"]}
    feats["observation.state"] = {"dtype": "float32", "shape": [w.state_dim], "names": w.state_names}
    feats["action"] = {"dtype": "float32", "shape": [w.action_dim], "names": w.action_names}
    for key, names in w.extra_features.items():
        feats[key] = {"dtype": "float32", "shape": [len(names)], "names": list(names)}
    for name, dtype in (
        ("timestamp", "float32"),
        ("frame_index", "int64"),
        ("episode_index", "int64"),
        ("index", "int64"),
        ("task_index", "int64"),
    ):
        feats[name] = {"dtype": dtype, "shape": [1], "names": None}
    if w.instruction_column:
        feats[w.instruction_column] = {"dtype": "string", "shape": [1], "names": None}
    return feats


def parquet_schema(w: Columns) -> pa.Schema:
    """The data parquet files' schema for a writer's columns."""
    fields = []
    if not w.use_videos:
        img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        fields += [pa.field(k, img) for k in w.image_keys]
    fields += [pa.field("observation.state", pa.list_(pa.float32())), pa.field("action", pa.list_(pa.float32()))]
    fields += [pa.field(k, pa.list_(pa.float32())) for k in w.extra_features]
    fields += [
        pa.field("timestamp", pa.float32()),
        pa.field("frame_index", pa.int64()),
        pa.field("episode_index", pa.int64()),
        pa.field("index", pa.int64()),
        pa.field("task_index", pa.int64()),
    ]
    if w.instruction_column:
        fields.append(pa.field(w.instruction_column, pa.string()))
    return pa.schema(fields)
