"""A tiny dataset in the schema and layout of the public LeRobot LIBERO data (HuggingFaceVLA/libero).

Written the way LeRobot's v2.1 -> v3.0 conversion leaves that dataset, not through this project's
writer, so that reading it tests compatibility with the public data rather than with ourselves:
LeRobot v3 layout (meta/info.json, meta/tasks.parquet with the task string as an unnamed pandas
index, meta/episodes/chunk-*/file-*.parquet with per-episode offsets and stats, data parquet with
fixed-size float lists, one AV1 mp4 per camera and file holding consecutive episodes), the
features' dtype/shape/names as LeRobot's LIBERO conversion declares them, fps 10, one row per
control step and no `control_steps_per_frame` field.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .fixture import BACKGROUND, GOALS, WRIST_BACKGROUND, instruction, render, simulate

CODEBASE_VERSION = "v3.0"
FPS = 10
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CAMERAS = ("observation.images.image", "observation.images.wrist_image")
# LeRobot's video defaults (libsvtav1, yuv420p, a keyframe every 2 frames, crf 30).
VIDEO_CODEC, VIDEO_OPTIONS = "libsvtav1", {"g": "2", "crf": "30", "preset": "12"}

_VIDEO_NAMES = ["height", "width", "rgb"]
# Non-video features of LeRobot's LIBERO conversion, in its order; names are {"motors": [...]}.
LOW_DIM_FEATURES = {
    "observation.state": ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"],
    "observation.states.ee_state": ["x", "y", "z", "roll", "pitch", "yaw"],
    "observation.states.joint_state": [f"joint_{i}" for i in range(7)],
    "observation.states.gripper_state": ["gripper", "gripper"],
    "action": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
}
# Columns LeRobot adds to every dataset, after the user features.
DEFAULT_FEATURES = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}


def features(image_size: int, codec_name: str) -> dict:
    """info.json `features`: video features carry their stream info, the others (as the v3.0
    conversion leaves them) the dataset's fps."""
    out: dict = {}
    for key in CAMERAS:
        out[key] = {
            "dtype": "video",
            "shape": [image_size, image_size, 3],
            "names": list(_VIDEO_NAMES),
            "info": {
                "video.height": image_size,
                "video.width": image_size,
                "video.codec": codec_name,
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": FPS,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    for key, names in LOW_DIM_FEATURES.items():
        out[key] = {"dtype": "float32", "shape": [len(names)], "names": {"motors": list(names)}, "fps": FPS}
    for key, dtype in DEFAULT_FEATURES.items():
        out[key] = {"dtype": dtype, "shape": [1], "names": None, "fps": FPS}
    return out


def _episode_arrays(task: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Low-dimensional columns of one episode: the synthetic mover dressed in LIBERO's state layout."""
    goal = np.asarray(GOALS[task][0])
    pos, act = simulate(rng.uniform(0.35, 0.65, 2), goal, length, rng)
    ee = np.zeros((length, 6), np.float32)
    ee[:, :2] = pos
    ee[:, 2] = 0.9 + np.cumsum(act[:, 2])  # table height plus the arm's z jitter
    ee[:, 3:6] = np.array([np.pi, 0.0, 0.0]) + np.cumsum(act[:, 3:6], axis=0)
    closed = act[:, 6] > 0
    gripper = np.stack([np.where(closed, 0.0, 0.04), np.where(closed, 0.0, -0.04)], 1).astype(np.float32)
    joints = (np.cumsum(rng.normal(0, 0.01, (length, 7)), axis=0) + np.linspace(-1, 1, 7)).astype(np.float32)
    return {
        "observation.state": np.concatenate([ee, gripper], 1).astype(np.float32),
        "observation.states.ee_state": ee,
        "observation.states.joint_state": joints,
        "observation.states.gripper_state": gripper,
        "action": act.astype(np.float32),
        "_pos": pos,
    }


def _fixed_list(x: np.ndarray) -> pa.Array:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _stats(x: np.ndarray) -> dict[str, list]:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "count": [len(x)],
    }


def _image_stats(frames: np.ndarray) -> dict[str, list]:
    """Per-channel stats in [0, 1], shaped (3, 1, 1) as LeRobot stores image statistics."""
    x = frames.reshape(-1, 3).astype(np.float64) / 255.0
    shape = lambda v: [[[float(c)]] for c in v]  # noqa: E731
    return {
        "min": shape(x.min(0)),
        "max": shape(x.max(0)),
        "mean": shape(x.mean(0)),
        "std": shape(x.std(0)),
        "count": [len(frames)],
    }


@contextmanager
def _scheduling_kept():
    """Undo SVT-AV1's switch of the calling thread to real-time scheduling (it does so when run as root).

    Left in place, every thread and process started afterwards inherits SCHED_FIFO priority 99: spawned
    simulator workers then ran 8x slower on two cores and could starve each other into a hang.
    """
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


class _Video:
    """One camera's mp4 for one file index; episodes are appended back to back, pts counting frames."""

    def __init__(self, path: Path, size: int, codec: str):
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at level 3 (info)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._c = av.open(str(path), mode="w")
        self._s = self._c.add_stream(codec, rate=FPS)
        self._s.width = self._s.height = size
        self._s.pix_fmt = "yuv420p"
        self._s.time_base = Fraction(1, FPS)
        self._s.options = dict(VIDEO_OPTIONS) if codec == VIDEO_CODEC else {"crf": "18", "threads": "1"}
        self.n = 0

    def write(self, frames: np.ndarray) -> None:
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = self.n, Fraction(1, FPS)
            with _scheduling_kept():
                packets = self._s.encode(frame)
            for packet in packets:
                self._c.mux(packet)
            self.n += 1

    def close(self) -> None:
        with _scheduling_kept():
            packets = self._s.encode()
        for packet in packets:
            self._c.mux(packet)
        with _scheduling_kept():
            self._c.close()


def _tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes a frame indexed by the (unnamed) task string."""
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": pa.array(tasks, pa.string())}
    )
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def make_public_fixture(
    root,
    n_episodes: int = 4,
    length: int = 20,
    n_tasks: int = 2,
    image_size: int = 256,
    n_files: int = 1,
    seed: int = 0,
    codec: str | None = None,
) -> Path:
    """Write the dataset to `root` (replaced if present) and return it.

    Episodes cycle through tasks 0..n_tasks-1 and are spread over `n_files` data/video files
    (chunk-000/file-000, file-001, ...), as a larger dataset rolls its files over.
    `codec`: libsvtav1 (AV1, as the public videos) by default when this PyAV can encode it.
    """
    if not 1 <= n_tasks <= len(GOALS):
        raise ValueError(f"n_tasks must be in 1..{len(GOALS)}, got {n_tasks}")
    if n_episodes < 1 or length < 2 or not 1 <= n_files <= n_episodes:
        raise ValueError(
            f"need n_episodes >= 1, length >= 2 and 1 <= n_files <= n_episodes; got {n_episodes}, {length}, {n_files}"
        )
    if image_size < 16 or image_size % 2:
        raise ValueError(f"image_size must be even and >= 16 (yuv420p video), got {image_size}")
    codec = codec or (VIDEO_CODEC if VIDEO_CODEC in av.codecs_available else "libx264")
    codec_name = {"libsvtav1": "av1", "libx264": "h264"}.get(codec, codec)
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    tasks = [instruction(t) for t in range(n_tasks)]
    file_of = np.array_split(np.arange(n_episodes), n_files)
    episodes, all_cols = [], {k: [] for k in LOW_DIM_FEATURES}
    all_frames = {k: [] for k in CAMERAS}
    index = 0
    for file_index, eps in enumerate(file_of):
        videos = {
            k: _Video(root / VIDEO_PATH.format(video_key=k, chunk_index=0, file_index=file_index), image_size, codec)
            for k in CAMERAS
        }
        tables = []
        for ep in eps.tolist():
            task = ep % n_tasks
            cols = _episode_arrays(task, length, rng)
            pos = cols.pop("_pos")
            frames = {
                "observation.images.image": render(pos, image_size, BACKGROUND),
                "observation.images.wrist_image": np.ascontiguousarray(
                    render(pos, image_size, WRIST_BACKGROUND)[:, ::-1]
                ),
            }
            meta = {
                "episode_index": ep,
                "data/chunk_index": 0,
                "data/file_index": file_index,
                "dataset_from_index": index,
                "dataset_to_index": index + length,
            }
            for key in CAMERAS:
                v = videos[key]
                meta.update(
                    {
                        f"videos/{key}/chunk_index": 0,
                        f"videos/{key}/file_index": file_index,
                        f"videos/{key}/from_timestamp": v.n / FPS,
                        f"videos/{key}/to_timestamp": (v.n + length) / FPS,
                    }
                )
                v.write(frames[key])
                all_frames[key].append(frames[key])
            frame_index = np.arange(length, dtype=np.int64)
            data = {k: _fixed_list(cols[k]) for k in LOW_DIM_FEATURES}
            data.update(
                {
                    "timestamp": pa.array((frame_index / FPS).astype(np.float32)),
                    "frame_index": pa.array(frame_index),
                    "episode_index": pa.array(np.full(length, ep, np.int64)),
                    "index": pa.array(np.arange(index, index + length, dtype=np.int64)),
                    "task_index": pa.array(np.full(length, task, np.int64)),
                }
            )
            tables.append(pa.table(data))
            meta.update({"tasks": [tasks[task]], "length": length})
            stats = {
                **{k: _stats(cols[k]) for k in LOW_DIM_FEATURES},
                **{k: _image_stats(frames[k]) for k in CAMERAS},
                "timestamp": _stats(frame_index / FPS),
                "frame_index": _stats(frame_index),
                "episode_index": _stats(np.full(length, ep)),
                "index": _stats(np.arange(index, index + length)),
                "task_index": _stats(np.full(length, task)),
            }
            meta.update({f"stats/{k}/{s}": v for k, st in stats.items() for s, v in st.items()})
            meta.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            episodes.append(meta)
            for k in LOW_DIM_FEATURES:
                all_cols[k].append(cols[k])
            index += length
        for v in videos.values():
            v.close()
        path = root / DATA_PATH.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), path)

    meta_dir = root / "meta"
    (meta_dir / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(episodes), root / EPISODES_PATH.format(chunk_index=0, file_index=0))
    pq.write_table(_tasks_table(tasks), meta_dir / "tasks.parquet")
    stats = {k: _stats(np.concatenate(v)) for k, v in all_cols.items()}
    stats.update({k: _image_stats(np.concatenate(v)) for k, v in all_frames.items()})
    (meta_dir / "stats.json").write_text(json.dumps(stats, indent=4))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": "panda",
        "total_episodes": n_episodes,
        "total_frames": index,
        "total_tasks": n_tasks,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": FPS,
        "splits": {"train": f"0:{n_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features(image_size, codec_name),
    }
    (meta_dir / "info.json").write_text(json.dumps(info, indent=4))
    return root
