"""Write episodes as a LeRobot v3 dataset (the layout of the public HuggingFaceVLA/libero data).

meta/info.json records under "provenance" the code that wrote the dataset (`provenance.py`; a caller may pass
its own record in `extra_info`, as a resumed generation does); the dataset fingerprint leaves it out
(`fingerprint.py`), so the same data written by another commit keys the same caches."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..provenance import continued, provenance
from .video import VideoWriter
from .writer_columns import features, list_array, parquet_schema, png_cell

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
LIBERO_STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"]
LIBERO_ACTION_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]


def _default_names(dim: int, libero: list[str], prefix: str) -> list[str]:
    return list(libero) if dim == len(libero) else [f"{prefix}{i}" for i in range(dim)]


class LeRobotWriter:
    """Streams episodes into a temp dir beside `root` and renames it into place on finalize().

    Building beside the target and renaming means an interrupted run never leaves a half-written
    dataset at `root` (readers would otherwise fingerprint and train on it)."""

    def __init__(
        self,
        root,
        fps: int = 10,
        image_keys=("observation.images.image", "observation.images.wrist_image"),
        image_size: int = 128,
        state_dim: int = 8,
        action_dim: int = 7,
        robot_type: str = "panda",
        use_videos: bool = True,
        state_names=None,
        action_names=None,
        instruction_column: str | None = None,
        overwrite: bool = False,
        extra_info: dict | None = None,
        extra_features: dict[str, list[str]] | None = None,
    ):
        """extra_features: further float32 vector features, key -> the name of each dimension (e.g.
        `observation.environment_state`); every episode then gives each of them to add_episode(extra=...)."""
        self.root = Path(root)
        self.extra_info = dict(extra_info or {})  # project fields for info.json (e.g. control_steps_per_frame)
        self.extra_features = {str(k): [str(n) for n in v] for k, v in (extra_features or {}).items()}
        taken = {"observation.state", "action", *image_keys}
        bad = {k: len(v) for k, v in self.extra_features.items() if k in taken or not v}
        if bad:
            raise ValueError(
                f"extra_features {bad} must be new keys with at least one named dimension; "
                f"the writer already writes {sorted(taken)}"
            )
        self._extra_files: dict[str, str] = {}
        if self.root.exists() and any(self.root.iterdir()) and not overwrite:
            raise FileExistsError(f"{self.root} already exists and is not empty (pass overwrite=True to replace it)")
        if fps <= 0 or image_size <= 0 or state_dim <= 0 or action_dim <= 0:
            raise ValueError(
                f"fps, image_size, state_dim, action_dim must be positive, got "
                f"{fps}, {image_size}, {state_dim}, {action_dim}"
            )
        self.fps, self.image_size, self.robot_type = int(fps), int(image_size), robot_type
        self.image_keys = list(image_keys)
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.use_videos, self.overwrite = use_videos, overwrite
        self.instruction_column = instruction_column
        self.state_names = list(state_names) if state_names else _default_names(state_dim, LIBERO_STATE_NAMES, "s")
        self.action_names = list(action_names) if action_names else _default_names(action_dim, LIBERO_ACTION_NAMES, "a")
        if len(self.state_names) != state_dim or len(self.action_names) != action_dim:
            raise ValueError(
                f"state_names/action_names lengths {len(self.state_names)}/{len(self.action_names)} "
                f"do not match state_dim/action_dim {state_dim}/{action_dim}"
            )
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.tmp-", dir=self.root.parent))
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict] = []
        self._n_frames = 0
        self._videos: dict[str, VideoWriter] = {}
        self._parquet: pq.ParquetWriter | None = None
        self._state_sum, self._state_sq = np.zeros(state_dim), np.zeros(state_dim)
        self._action_sum, self._action_sq = np.zeros(action_dim), np.zeros(action_dim)
        self._mins = {"observation.state": np.full(state_dim, np.inf), "action": np.full(action_dim, np.inf)}
        self._maxs = {"observation.state": np.full(state_dim, -np.inf), "action": np.full(action_dim, -np.inf)}
        # Per extra feature: [sum, sum of squares] for stats.json (min and max join _mins/_maxs).
        self._extra_sums = {k: [np.zeros(len(v)), np.zeros(len(v))] for k, v in self.extra_features.items()}
        for k, v in self.extra_features.items():
            self._mins[k], self._maxs[k] = np.full(len(v), np.inf), np.full(len(v), -np.inf)
        self._done = False

    # -- writing --------------------------------------------------------------------------------
    def _validate(self, images: dict, state, action, task) -> tuple[np.ndarray, np.ndarray]:
        if self._done:
            raise RuntimeError("writer already finalized or aborted")
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task must be a non-empty instruction string, got {task!r}")
        state = np.asarray(state, dtype=np.float32)
        action = np.asarray(action, dtype=np.float32)
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state must be (T,{self.state_dim}), got {state.shape}")
        if action.ndim != 2 or action.shape[1] != self.action_dim:
            raise ValueError(f"action must be (T,{self.action_dim}), got {action.shape}")
        T = len(state)
        if T == 0 or len(action) != T:
            raise ValueError(f"state and action must have the same non-zero length, got {T} and {len(action)}")
        for name, arr in (("state", state), ("action", action)):
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                raise ValueError(f"{name} has NaN/inf at step {int(np.argmax(bad))}")
        if set(images) != set(self.image_keys):
            raise ValueError(f"images keys {sorted(images)} do not match image_keys {sorted(self.image_keys)}")
        want = (T, self.image_size, self.image_size, 3)
        for key, arr in images.items():
            arr = np.asarray(arr)
            if arr.dtype != np.uint8 or arr.shape != want:
                raise ValueError(f"images[{key!r}] must be uint8 {want}, got {arr.dtype} {arr.shape}")
        return state, action

    def _validate_extra(self, extra: dict | None, T: int) -> dict[str, np.ndarray]:
        extra = dict(extra or {})
        if set(extra) != set(self.extra_features):
            raise ValueError(f"extra keys {sorted(extra)} do not match extra_features {sorted(self.extra_features)}")
        out = {}
        for key, names in self.extra_features.items():
            arr = np.asarray(extra[key], dtype=np.float32)
            if arr.shape != (T, len(names)):
                raise ValueError(f"extra[{key!r}] must be (T,{len(names)}) = ({T},{len(names)}), got {arr.shape}")
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                raise ValueError(f"{key} has NaN/inf at step {int(np.argmax(bad))}")
            out[key] = arr
        return out

    def add_episode(self, images: dict, state, action, task: str, extra: dict | None = None) -> int:
        """Append one episode; returns its episode_index. `extra`: one (T, D) array per extra feature."""
        state, action = self._validate(images, state, action, task)
        T = len(state)
        extra = self._validate_extra(extra, T)
        ep = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        start = self._n_frames
        meta = {
            "episode_index": ep,
            "tasks": [task],
            "length": T,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": start,
            "dataset_to_index": start + T,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
        }
        cols: dict = {}
        for key in self.image_keys:
            frames = np.asarray(images[key])
            if self.use_videos:
                vw = self._videos.get(key)
                if vw is None:
                    path = self._tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
                    vw = self._videos[key] = VideoWriter(path, self.fps, self.image_size, self.image_size)
                from_ts = vw.n_frames / self.fps
                vw.write(frames)
                meta.update(
                    {
                        f"videos/{key}/chunk_index": 0,
                        f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": from_ts,
                        f"videos/{key}/to_timestamp": vw.n_frames / self.fps,
                    }
                )
            else:
                cols[key] = [{"bytes": png_cell(f), "path": f"frame_{start + i:06d}.png"} for i, f in enumerate(frames)]
        frame_index = np.arange(T, dtype=np.int64)
        cols.update(
            {
                "observation.state": list_array(state),
                "action": list_array(action),
                **{k: list_array(v) for k, v in extra.items()},
                "timestamp": (frame_index / self.fps).astype(np.float32),
                "frame_index": frame_index,
                "episode_index": np.full(T, ep, np.int64),
                "index": np.arange(start, start + T, dtype=np.int64),
                "task_index": np.full(T, task_index, np.int64),
            }
        )
        if self.instruction_column:
            cols[self.instruction_column] = [task] * T
        schema = parquet_schema(self)
        table = pa.table(
            {
                f.name: cols[f.name] if isinstance(cols[f.name], pa.Array) else pa.array(cols[f.name], type=f.type)
                for f in schema
            },
            schema=schema,
        )
        if self._parquet is None:
            path = self._tmp / DATA_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._parquet = pq.ParquetWriter(str(path), schema)
        self._parquet.write_table(table)
        for key, arr in (("observation.state", state), ("action", action), *extra.items()):
            self._mins[key] = np.minimum(self._mins[key], arr.min(0))
            self._maxs[key] = np.maximum(self._maxs[key], arr.max(0))
        for key, arr in extra.items():
            self._extra_sums[key][0] += arr.sum(0, dtype=np.float64)
            self._extra_sums[key][1] += (arr.astype(np.float64) ** 2).sum(0)
        self._state_sum += state.sum(0)
        self._state_sq += (state.astype(np.float64) ** 2).sum(0)
        self._action_sum += action.sum(0)
        self._action_sq += (action.astype(np.float64) ** 2).sum(0)
        self._episodes.append(meta)
        self._n_frames += T
        return ep

    def _stats(self) -> dict:
        out = {}
        n = max(self._n_frames, 1)
        for key, s, sq in (
            ("observation.state", self._state_sum, self._state_sq),
            ("action", self._action_sum, self._action_sq),
            *((k, v[0], v[1]) for k, v in self._extra_sums.items()),
        ):
            mean = s / n
            std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
            out[key] = {
                "mean": mean.tolist(),
                "std": std.tolist(),
                "min": self._mins[key].tolist(),
                "max": self._maxs[key].tolist(),
                "count": [self._n_frames],
            }
        return out

    def add_file(self, relpath: str, text: str) -> None:
        """A text file written into the dataset by `finalize`, with the rest (e.g. meta/start_states.jsonl)."""
        self._extra_files[relpath] = text

    def finalize(self) -> Path:
        """Write metadata, close files and move the finished dataset to `root`."""
        if self._done:
            raise RuntimeError("writer already finalized or aborted")
        if not self._episodes:
            raise ValueError("no episodes were added; refusing to write an empty dataset")
        try:
            for vw in self._videos.values():
                vw.close()
            self._parquet.close()
            meta = self._tmp / "meta"
            meta.mkdir(parents=True, exist_ok=True)
            tasks = sorted(self._tasks.items(), key=lambda kv: kv[1])
            pq.write_table(
                pa.table(
                    {
                        "task_index": pa.array([i for _, i in tasks], pa.int64()),
                        "task": pa.array([t for t, _ in tasks], pa.string()),
                    }
                ),
                meta / "tasks.parquet",
            )
            ep_path = self._tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
            ep_path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(self._episodes), ep_path)
            info = {
                "codebase_version": "v3.0",
                "robot_type": self.robot_type,
                "total_episodes": len(self._episodes),
                "total_frames": self._n_frames,
                "total_tasks": len(self._tasks),
                "chunks_size": 1000,
                "data_files_size_in_mb": 100,
                "video_files_size_in_mb": 500,
                "fps": self.fps,
                "splits": {"train": f"0:{len(self._episodes)}"},
                "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.use_videos else None,
                "features": features(self),
                **self.extra_info,
            }
            info.setdefault("provenance", continued(None, provenance()))
            for rel, text in self._extra_files.items():
                (self._tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (self._tmp / rel).write_text(text)
            (meta / "info.json").write_text(json.dumps(info, indent=4))
            (meta / "stats.json").write_text(json.dumps(self._stats(), indent=4))
            self._install()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.root

    def _install(self) -> None:
        # Rename is atomic on one filesystem; an old dataset is moved aside first and removed last.
        old = None
        if self.root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.old-", dir=self.root.parent))
            os.replace(self.root, old / "d")
        os.replace(self._tmp, self.root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Drop everything written so far; `root` is left untouched."""
        for vw in self._videos.values():
            try:
                vw.close()
            except Exception:
                pass
        if self._parquet is not None:
            try:
                self._parquet.close()
            except Exception:
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not self._done:
            self.abort()
        return False
