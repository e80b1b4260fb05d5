"""Read a local LeRobot v3 dataset into per-frame arrays, refusing inputs that would train silently wrong:
unreadable files are named, and meta/episodes must agree with the data rows and the video files
(every episode's rows, span and video length) before any frame is decoded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..cache_dirs import default_dirs
from . import frame_cache
from .fingerprint import dataset_fingerprint
from .lerobot_tables import (
    DatasetError,
    episode_meta,
    is_string,
    matrix,
    missing_episode_meta,
    missing_tasks,
    parquet_error,
    read_info,
    read_tables,
    read_tasks,
)
from .lerobot_video import check_span, check_video_length, inline_frames, video_frames


@dataclass
class Episode:
    """One episode's rows in the dataset's frame arrays."""

    index: int  # episode id value
    start: int  # first row (inclusive)
    end: int  # one past the last row
    task: str  # resolved instruction

    @property
    def length(self) -> int:
        return self.end - self.start


class LeRobotDataset:
    """Frame arrays of a LeRobot v3 dataset sorted by (episode, frame_index); images decoded on demand."""

    def __init__(
        self,
        root,
        instruction_key: str = "task",
        episode_id_key: str = "episode_index",
        state_key: str = "observation.state",
        action_key: str = "action",
        frame_cache_dir: str | Path | None = None,
        progress: bool = True,
    ):
        self.root = Path(root)
        # None: <root>/.cache/frames, or the user's cache folder when the dataset is read-only.
        self.frame_cache_dir, self.progress = frame_cache_dir, progress
        self._fingerprint: str | None = None
        self.instruction_key, self.episode_id_key = instruction_key, episode_id_key
        self.state_key, self.action_key = state_key, action_key
        self.info, self.fps = read_info(self.root)
        self.features: dict = self.info.get("features", {})
        self.image_keys = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        self._data_files = sorted((self.root / "data").glob("**/*.parquet"))
        if not self._data_files:
            raise DatasetError(f"no parquet files under {self.root / 'data'}; expected data/chunk-*/file-*.parquet")
        self._images: dict = {}
        self._stamps = self._file_stamps()
        self._load()

    def _file_stamps(self) -> list[tuple[int, int]]:
        return [(f.stat().st_size, f.stat().st_mtime_ns) for f in self._data_files]

    # -- loading --------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            schema = pq.read_schema(self._data_files[0])
        except (pa.ArrowException, OSError) as e:
            raise parquet_error(self._data_files[0], e) from None
        columns = schema.names
        inline = {k for k in self.image_keys if self.features[k].get("dtype") == "image"}
        videos = [k for k in self.image_keys if k not in inline]
        # Required meta files are named when missing, before any row is read or any other column blamed.
        if videos and not any((self.root / "meta" / "episodes").glob("**/*.parquet")):
            raise missing_episode_meta(self.root, videos)
        for role, key in (
            ("episode_id_key", self.episode_id_key),
            ("state_key", self.state_key),
            ("action_key", self.action_key),
        ):
            if key not in columns:
                raise DatasetError(
                    f"{role} {key!r} is not a column of {self._data_files[0]}; columns present: {columns}"
                )
        # Image bytes are the bulk of the data; they are read only when images() asks for them.
        table = read_tables(self._data_files, [c for c in columns if c not in inline])
        n = table.num_rows
        if n == 0:
            raise DatasetError(f"dataset {self.root} has no frames")
        ep = table.column(self.episode_id_key).to_numpy().astype(np.int64)
        if "frame_index" in table.column_names:
            fi = table.column("frame_index").to_numpy().astype(np.int64)
        else:
            fi = np.arange(n, dtype=np.int64)  # file order is the only order there is
        # lexsort is stable, so frames keep file order on ties and the order is reproducible.
        order = np.lexsort((fi, ep))
        self._order = order
        self.episode_ids, self.frame_index = ep[order], fi[order]
        dup = (np.diff(self.episode_ids) == 0) & (np.diff(self.frame_index) == 0)
        if dup.any():
            row = int(np.argmax(dup)) + 1
            raise DatasetError(
                f"frame_index {self.frame_index[row]} appears more than once in episode "
                f"{self.episode_ids[row]} ({int(dup.sum())} duplicates); expected unique frames "
                f"per {self.episode_id_key!r}"
            )
        self.timestamp = (
            table.column("timestamp").to_numpy().astype(np.float64)[order]
            if "timestamp" in table.column_names
            else self.frame_index / self.fps
        )
        self._episode_index = (
            table.column("episode_index").to_numpy().astype(np.int64)[order]
            if "episode_index" in table.column_names
            else None
        )
        self.state = self._checked_matrix(table, self.state_key, order)
        self.action = self._checked_matrix(table, self.action_key, order)
        self.instructions = self._resolve_instructions(table, order)
        self.episodes = self._build_episodes()
        self._table = table
        self._check_episode_rows()

    def _checked_matrix(self, table: pa.Table, key: str, order: np.ndarray) -> np.ndarray:
        m = matrix(table, key)[order]
        bad = ~np.isfinite(m).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise DatasetError(
                f"{key!r} has NaN/inf values in {int(bad.sum())} frames; first bad row {row} "
                f"(episode {self.episode_ids[row]}, frame {self.frame_index[row]}); "
                f"expected finite floats"
            )
        shape = self.features.get(key, {}).get("shape")
        if shape and int(np.prod(shape)) != m.shape[1]:
            raise DatasetError(
                f"{key!r} has dimension {m.shape[1]} in the data but meta/info.json features "
                f"declare shape {shape}; expected them to agree"
            )
        return m

    def _resolve_instructions(self, table: pa.Table, order: np.ndarray) -> list[str]:
        key = self.instruction_key
        names = table.column_names
        tasks = read_tasks(self.root) if "task_index" in names else None
        if tasks is None and "task_index" in names and key == "task" and key not in names:
            raise missing_tasks(self.root)
        available = [c for c in names if is_string(table.schema.field(c).type)]
        if tasks is not None and "task" not in available:
            available.append("task")
        if key in names and is_string(table.schema.field(key).type):
            values = table.column(key).cast(pa.string()).to_pylist()
            texts = ["" if values[i] is None else values[i] for i in order]
        elif key == "task" and tasks is not None:
            tidx = table.column("task_index").to_numpy().astype(np.int64)[order]
            missing = sorted(set(np.unique(tidx).tolist()) - set(tasks))
            if missing:
                raise DatasetError(
                    f"task_index values {missing[:10]} have no entry in meta/tasks; "
                    f"expected every task_index to be listed there"
                )
            lookup = {i: tasks[i] for i in np.unique(tidx).tolist()}
            texts = [lookup[i] for i in tidx.tolist()]
        else:
            why = "is not a string column" if key in names else "was not found"
            gone = ""
            if tasks is None and "task_index" in names:
                gone = (
                    f" ('task' would be: the data's task_index refers to {self.root / 'meta/tasks.parquet'}, missing)"
                )
            raise DatasetError(
                f"instruction_key {key!r} {why} in {self.root}; keys that hold instructions: {available}{gone} "
                f"(LeRobot LIBERO keeps the instruction under 'task'); data columns: {names}. "
                f"Training without an instruction gives a task-agnostic policy."
            )
        empty = np.array([not t.strip() for t in texts])
        if empty.any():
            n_eps = len(np.unique(self.episode_ids[empty]))
            raise DatasetError(
                f"instruction_key {key!r} is empty or whitespace in {int(empty.sum())} frames "
                f"of {n_eps} episodes (first: episode {self.episode_ids[np.argmax(empty)]}); "
                f"expected a non-empty instruction for every frame"
            )
        return texts

    def _build_episodes(self) -> list[Episode]:
        cuts = np.flatnonzero(np.diff(self.episode_ids)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(self.episode_ids)]])
        return [Episode(int(self.episode_ids[s]), int(s), int(e), self.instructions[s]) for s, e in zip(starts, ends)]

    # -- queries --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.episode_ids)

    def rows_of(self, episode_ids) -> np.ndarray:
        """Rows (sorted) of the given episode ids; unknown ids are an error."""
        ids = np.atleast_1d(np.asarray(episode_ids, dtype=np.int64))
        unknown = np.setdiff1d(ids, self.episode_ids)
        if len(unknown):
            raise DatasetError(f"episode ids {unknown[:10].tolist()} are not in {self.root}")
        return np.flatnonzero(np.isin(self.episode_ids, ids))

    def column(self, name: str) -> np.ndarray:
        """Any other numeric data column (e.g. observation.states.ee_state) in the sorted frame order."""
        if name not in self._table.column_names:
            raise DatasetError(f"column {name!r} not in {self.root}; columns: {self._table.column_names}")
        col = self._table.column(name)
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
            return matrix(self._table, name)[self._order]
        return col.to_numpy()[self._order]

    def images(self, key: str, size: int | None = None) -> np.ndarray:
        """(N,S,S,3) uint8 frames of an image/video feature in row order, resized to size×size (native size
        when None), as a read-only np.memmap of the on-disk frame cache (built on first use, by streaming
        decode; see data/frame_cache.py); memoised per process."""
        if key not in self.image_keys:
            raise DatasetError(f"image key {key!r} not in {self.root}; image keys: {self.image_keys}")
        if (key, size) not in self._images:
            # Frames are read after load; rows read now must still line up with the arrays read then.
            if self._file_stamps() != self._stamps:
                raise DatasetError(
                    f"data files under {self.root / 'data'} changed since the dataset was loaded; reload it"
                )
            if self._fingerprint is None:
                self._fingerprint = self.fingerprint()
            inline = self.features[key]["dtype"] == "image"
            if not inline:
                # Spans against the files' lengths: checked each time, also when the frames are cached.
                queries = self._video_queries(key)
            stream = (
                (lambda: inline_frames(self.root, self._data_files, self._order, key, self.features))
                if inline
                else (lambda: video_frames(key, queries, self.fps))
            )
            name = frame_cache.cache_name(self._fingerprint, key, size, self._order)
            dirs = [Path(self.frame_cache_dir)] if self.frame_cache_dir else default_dirs(self.root, "frames")
            self._images[(key, size)] = frame_cache.open_or_build(
                name, dirs, len(self), size, stream, desc=f"decode {key}", progress=self.progress
            )
        return self._images[(key, size)]

    def _check_episode_rows(self) -> None:
        """meta/episodes and the data rows describe the same episodes: a data file left out of a copy, or
        an episode cut short, used to train on what was left without a word."""
        if self._episode_index is None or not (self.root / "meta" / "episodes").is_dir():
            return
        if not any((self.root / "meta" / "episodes").glob("**/*.parquet")):
            return
        metas = episode_meta(self.root, ("length", "dataset_from_index", "dataset_to_index", "data/"))
        if not metas:
            return
        ids, counts = np.unique(self._episode_index, return_counts=True)
        rows = dict(zip(ids.tolist(), counts.tolist()))
        absent = sorted(set(metas) - set(rows))
        if absent:
            m = metas[absent[0]]
            where = ""
            if "data/chunk_index" in m and "data/file_index" in m:
                template = self.info.get("data_path") or "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
                where = (
                    " ("
                    + str(
                        self.root
                        / template.format(chunk_index=int(m["data/chunk_index"]), file_index=int(m["data/file_index"]))
                    )
                    + ")"
                )
            raise DatasetError(
                f"episodes {absent[:10]} are listed in {m['_file']} but have no rows in the data files "
                f"under {self.root / 'data'}; expected the data file that holds episode {absent[0]}"
                f"{where}"
            )
        for ep, n in rows.items():
            m = metas.get(ep)
            if m is None:
                continue  # an episode without metadata is named when its video is looked up
            length = m.get("length")
            if length is not None and int(length) != n:
                raise DatasetError(
                    f"episode {ep} has {n} rows in the data files but {m['_file']} gives it length "
                    f"{int(length)}; expected them to agree"
                )
            lo, hi = m.get("dataset_from_index"), m.get("dataset_to_index")
            if lo is not None and hi is not None and int(hi) - int(lo) != n:
                raise DatasetError(
                    f"episode {ep} has {n} rows in the data files but {m['_file']} gives it rows "
                    f"[{int(lo)}, {int(hi)}); expected them to agree"
                )

    def _video_queries(self, key: str) -> dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per video file (in row order): the rows it holds, their times in the file, their episodes;
        sorted by time."""
        if self._episode_index is None:
            raise DatasetError(f"video feature {key!r} needs an 'episode_index' data column to find its files")
        metas = episode_meta(self.root, (f"videos/{key}/",))
        template = self.info.get("video_path") or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        parts: dict[Path, list] = {}
        spans: dict[Path, list[tuple[int, float, float]]] = {}
        for ep in self.episodes:
            ep_index = int(self._episode_index[ep.start])
            m = metas.get(ep_index)
            if m is None or f"videos/{key}/chunk_index" not in m:
                raise DatasetError(f"episode {ep_index} has no video entry for {key!r} in meta/episodes")
            path = self.root / template.format(
                video_key=key,
                chunk_index=int(m[f"videos/{key}/chunk_index"]),
                file_index=int(m[f"videos/{key}/file_index"]),
            )
            if not path.is_file():
                raise DatasetError(
                    f"video file {path} of {key!r} (episode {ep_index}) is missing; expected the file "
                    f"that meta/episodes and meta/info.json video_path name"
                )
            start = float(m[f"videos/{key}/from_timestamp"])
            end = m.get(f"videos/{key}/to_timestamp")
            query = start + self.timestamp[ep.start : ep.end]
            if end is not None:
                check_span(key, path, ep_index, ep.length, start, float(end), query, m["_file"], self.fps)
                spans.setdefault(path, []).append((ep_index, start, float(end)))
            parts.setdefault(path, []).append((np.arange(ep.start, ep.end), query, np.full(ep.length, ep_index)))
        for path, eps in spans.items():
            check_video_length(key, path, eps, self.fps, self.features)
        out = {}
        for path, p in parts.items():
            rows, query, eps = (np.concatenate(x) for x in zip(*p))
            order = np.argsort(query, kind="stable")
            out[path] = rows[order], query[order], eps[order]
        return out

    def fingerprint(self) -> str:
        """Content hash (16 hex chars) of metadata, tabular data, and each video's path, size and
        first and last MiB (data/fingerprint.py)."""
        return dataset_fingerprint(self.root, self._data_files)


def load_dataset(
    root,
    instruction_key: str = "task",
    episode_id_key: str = "episode_index",
    state_key: str = "observation.state",
    action_key: str = "action",
    frame_cache_dir: str | Path | None = None,
    progress: bool = True,
) -> LeRobotDataset:
    """Load a LeRobot v3 dataset from a local directory; raises DatasetError on unusable input."""
    return LeRobotDataset(
        root,
        instruction_key=instruction_key,
        episode_id_key=episode_id_key,
        state_key=state_key,
        action_key=action_key,
        frame_cache_dir=frame_cache_dir,
        progress=progress,
    )
