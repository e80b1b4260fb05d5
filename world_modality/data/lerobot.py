"""Read a local LeRobot v3 dataset into per-frame arrays, refusing inputs that would train silently wrong."""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from ..cache_dirs import default_dirs
from . import frame_cache
from .video import iter_video_frames


_FINGERPRINT_SPAN = 1 << 20  # bytes read from each end of a video for the dataset fingerprint


class DatasetError(ValueError):
    """A dataset that cannot be used as asked; raised at load time with the bad input named."""


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


def _read_tables(files: list[Path], columns: list[str] | None = None) -> pa.Table:
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _read_tasks(root: Path) -> dict[int, str] | None:
    """task_index -> task string, from meta/tasks.parquet (or the older meta/tasks.jsonl)."""
    path = root / "meta" / "tasks.parquet"
    if path.is_file():
        table = pq.read_table(path)
        if "task_index" not in table.column_names:
            raise DatasetError(f"{path} has no task_index column; columns: {table.column_names}")
        # LeRobot writes the task string as the pandas index: named "task", or unnamed when re-saved.
        names = [c for c in ("task", "__index_level_0__") if c in table.column_names]
        names += [c for c in table.column_names
                  if c not in names and c != "task_index" and _is_string(table.schema.field(c).type)]
        if not names:
            raise DatasetError(f"{path} has no task string column; columns: {table.column_names}")
        idx = table.column("task_index").to_pylist()
        return dict(zip(idx, (str(t) if t is not None else "" for t in table.column(names[0]).to_pylist())))
    path = root / "meta" / "tasks.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {int(r["task_index"]): str(r.get("task", "")) for r in rows}
    return None


def _matrix(table: pa.Table, key: str) -> np.ndarray:
    """A list<float> column as an (N, D) float32 array; ragged rows are an error."""
    col = table.column(key).combine_chunks()
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise DatasetError(f"column {key!r} has type {col.type}; expected a list of floats per frame")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.argmax(lengths != lengths[0]))
        raise DatasetError(f"column {key!r} has ragged rows: row 0 has {lengths[0]} values, row {row} has "
                           f"{lengths[row]}; expected the same dimension for every frame")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(col), int(lengths[0]) if len(lengths) else 0)


class LeRobotDataset:
    """Frame arrays of a LeRobot v3 dataset sorted by (episode, frame_index); images decoded on demand."""

    def __init__(self, root, instruction_key: str = "task", episode_id_key: str = "episode_index",
                 state_key: str = "observation.state", action_key: str = "action",
                 frame_cache_dir: str | Path | None = None, progress: bool = True):
        self.root = Path(root)
        # None: <root>/.cache/frames, or the user's cache folder when the dataset is read-only.
        self.frame_cache_dir, self.progress = frame_cache_dir, progress
        self._fingerprint: str | None = None
        self.instruction_key, self.episode_id_key = instruction_key, episode_id_key
        self.state_key, self.action_key = state_key, action_key
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist; expected a LeRobot v3 dataset directory "
                               f"containing meta/info.json")
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(f"missing {info_path}; expected a LeRobot v3 dataset with meta/info.json")
        self.info: dict = json.loads(info_path.read_text())
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise DatasetError(f"{info_path}: codebase_version {version!r} is not supported; expected 'v3.0'")
        self.fps = int(self.info.get("fps", 10))
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
        schema = pq.read_schema(self._data_files[0])
        columns = schema.names
        inline = {k for k in self.image_keys if self.features[k].get("dtype") == "image"}
        for role, key in (("episode_id_key", self.episode_id_key), ("state_key", self.state_key),
                          ("action_key", self.action_key)):
            if key not in columns:
                raise DatasetError(f"{role} {key!r} is not a column of {self._data_files[0]}; "
                                   f"columns present: {columns}")
        # Image bytes are the bulk of the data; they are read only when images() asks for them.
        table = _read_tables(self._data_files, [c for c in columns if c not in inline])
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
            raise DatasetError(f"frame_index {self.frame_index[row]} appears more than once in episode "
                               f"{self.episode_ids[row]} ({int(dup.sum())} duplicates); expected unique frames "
                               f"per {self.episode_id_key!r}")
        self.timestamp = (table.column("timestamp").to_numpy().astype(np.float64)[order]
                          if "timestamp" in table.column_names else self.frame_index / self.fps)
        self._episode_index = (table.column("episode_index").to_numpy().astype(np.int64)[order]
                               if "episode_index" in table.column_names else None)
        self.state = self._checked_matrix(table, self.state_key, order)
        self.action = self._checked_matrix(table, self.action_key, order)
        self.instructions = self._resolve_instructions(table, order)
        self.episodes = self._build_episodes()
        self._table = table

    def _checked_matrix(self, table: pa.Table, key: str, order: np.ndarray) -> np.ndarray:
        m = _matrix(table, key)[order]
        bad = ~np.isfinite(m).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise DatasetError(f"{key!r} has NaN/inf values in {int(bad.sum())} frames; first bad row {row} "
                               f"(episode {self.episode_ids[row]}, frame {self.frame_index[row]}); "
                               f"expected finite floats")
        shape = self.features.get(key, {}).get("shape")
        if shape and int(np.prod(shape)) != m.shape[1]:
            raise DatasetError(f"{key!r} has dimension {m.shape[1]} in the data but meta/info.json features "
                               f"declare shape {shape}; expected them to agree")
        return m

    def _resolve_instructions(self, table: pa.Table, order: np.ndarray) -> list[str]:
        key = self.instruction_key
        names = table.column_names
        tasks = _read_tasks(self.root) if "task_index" in names else None
        available = [c for c in names if _is_string(table.schema.field(c).type)]
        if tasks is not None and "task" not in available:
            available.append("task")
        if key in names and _is_string(table.schema.field(key).type):
            values = table.column(key).cast(pa.string()).to_pylist()
            texts = ["" if values[i] is None else values[i] for i in order]
        elif key == "task" and tasks is not None:
            tidx = table.column("task_index").to_numpy().astype(np.int64)[order]
            missing = sorted(set(np.unique(tidx).tolist()) - set(tasks))
            if missing:
                raise DatasetError(f"task_index values {missing[:10]} have no entry in meta/tasks; "
                                   f"expected every task_index to be listed there")
            lookup = {i: tasks[i] for i in np.unique(tidx).tolist()}
            texts = [lookup[i] for i in tidx.tolist()]
        else:
            why = "is not a string column" if key in names else "was not found"
            raise DatasetError(
                f"instruction_key {key!r} {why} in {self.root}; keys that hold instructions: {available} "
                f"(LeRobot LIBERO keeps the instruction under 'task'); data columns: {names}. "
                f"Training without an instruction gives a task-agnostic policy.")
        empty = np.array([not t.strip() for t in texts])
        if empty.any():
            n_eps = len(np.unique(self.episode_ids[empty]))
            raise DatasetError(f"instruction_key {key!r} is empty or whitespace in {int(empty.sum())} frames "
                               f"of {n_eps} episodes (first: episode {self.episode_ids[np.argmax(empty)]}); "
                               f"expected a non-empty instruction for every frame")
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
            return _matrix(self._table, name)[self._order]
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
                raise DatasetError(f"data files under {self.root / 'data'} changed since the dataset was loaded; "
                                   f"reload it")
            if self._fingerprint is None:
                self._fingerprint = self.fingerprint()
            inline = self.features[key]["dtype"] == "image"
            stream = (lambda: self._inline_frames(key)) if inline else (lambda: self._video_frames(key))
            name = frame_cache.cache_name(self._fingerprint, key, size, self._order)
            dirs = [Path(self.frame_cache_dir)] if self.frame_cache_dir else default_dirs(self.root, "frames")
            self._images[(key, size)] = frame_cache.open_or_build(
                name, dirs, len(self), size, stream, desc=f"decode {key}", progress=self.progress)
        return self._images[(key, size)]

    def _inline_frames(self, key: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row, image) for every row, read one parquet batch at a time."""
        row_of_source = np.empty_like(self._order)
        row_of_source[self._order] = np.arange(len(self._order))
        src = 0
        for f in self._data_files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=64, columns=[key]):
                for v in batch.column(0).to_pylist():
                    data = v.get("bytes") if isinstance(v, dict) else v
                    if data is None and isinstance(v, dict) and v.get("path"):
                        data = (self.root / v["path"]).read_bytes()
                    yield row_of_source[src:src + 1], np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    src += 1

    def _episode_meta(self) -> dict[int, dict]:
        files = sorted((self.root / "meta" / "episodes").glob("**/*.parquet"))
        if not files:
            raise DatasetError(f"no episode metadata under {self.root / 'meta' / 'episodes'}; "
                               f"expected meta/episodes/chunk-*/file-*.parquet for video features")
        return {int(r["episode_index"]): r for r in _read_tables(files).to_pylist()}

    def _video_queries(self, key: str) -> dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per video file (in row order): the rows it holds, their times in the file, their episodes;
        sorted by time."""
        if self._episode_index is None:
            raise DatasetError(f"video feature {key!r} needs an 'episode_index' data column to find its files")
        metas = self._episode_meta()
        template = self.info.get("video_path") or \
            "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        parts: dict[Path, list] = {}
        for ep in self.episodes:
            ep_index = int(self._episode_index[ep.start])
            m = metas.get(ep_index)
            if m is None or f"videos/{key}/chunk_index" not in m:
                raise DatasetError(f"episode {ep_index} has no video entry for {key!r} in meta/episodes")
            path = self.root / template.format(video_key=key, chunk_index=int(m[f"videos/{key}/chunk_index"]),
                                               file_index=int(m[f"videos/{key}/file_index"]))
            if not path.is_file():
                raise DatasetError(f"video file {path} of {key!r} (episode {ep_index}) is missing; expected the file "
                                   f"that meta/episodes and meta/info.json video_path name")
            query = float(m[f"videos/{key}/from_timestamp"]) + self.timestamp[ep.start:ep.end]
            parts.setdefault(path, []).append((np.arange(ep.start, ep.end), query, np.full(ep.length, ep_index)))
        out = {}
        for path, p in parts.items():
            rows, query, eps = (np.concatenate(x) for x in zip(*p))
            order = np.argsort(query, kind="stable")
            out[path] = rows[order], query[order], eps[order]
        return out

    def _video_frames(self, key: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, frame): each decoded frame with the rows whose time it is nearest to, as LeRobot itself
        matches rows to video frames (ties go to the earlier frame). One file is open at a time and only
        two decoded frames are held, so memory does not grow with the file or the camera."""
        for path, (rows, query, eps) in self._video_queries(key).items():
            i, prev, prev_rows = 0, None, []
            for t, frame in iter_video_frames(path):
                # Queries up to t lie between the previous frame and this one: each takes the nearer.
                j = int(np.searchsorted(query, t, side="right"))
                if j > i:
                    q = query[i:j]
                    t_prev = prev[0] if prev is not None else -np.inf  # before the first frame: take it
                    take_prev = q - t_prev <= t - q
                    self._check_gap(path, np.where(take_prev, q - t_prev, t - q), q, eps[i:j])
                    prev_rows.append(rows[i:j][take_prev])
                    cur_rows = [rows[i:j][~take_prev]]
                    i = j
                else:
                    cur_rows = []
                if prev is not None:
                    yield np.concatenate(prev_rows) if prev_rows else np.empty(0, np.int64), prev[1]
                prev, prev_rows = (t, frame), cur_rows
                if i == len(query):
                    break
            if prev is None:
                raise DatasetError(f"video {path} of {key!r} has no frames; expected one frame per data row")
            if i < len(query):  # rows after the last frame take the last frame
                q = query[i:]
                self._check_gap(path, q - prev[0], q, eps[i:])
                prev_rows.append(rows[i:])
            yield np.concatenate(prev_rows) if prev_rows else np.empty(0, np.int64), prev[1]

    def _check_gap(self, path: Path, gap: np.ndarray, query: np.ndarray, eps: np.ndarray) -> None:
        if (gap > 0.5 / self.fps).any():
            k = int(np.argmax(gap))
            raise DatasetError(f"video {path} has no frame near t={query[k]:.3f}s for episode "
                               f"{eps[k]}; expected one frame per data row at {self.fps} fps")

    def fingerprint(self) -> str:
        """Content hash (16 hex chars) of metadata, tabular data, and each video's path, size and
        first and last MiB."""
        h = hashlib.sha256()
        files = sorted(set((self.root / "meta").glob("*.json")) | set((self.root / "meta").glob("**/*.parquet"))
                       | set(self._data_files))
        for f in files:
            h.update(f.relative_to(self.root).as_posix().encode() + b"\0")
            h.update(f.read_bytes())
        # Videos are large: their size, first and last MiB stand in for their content. The last MiB
        # holds the mp4 index (every frame's size), so a re-encode of the same total size still shows.
        for f in sorted((self.root / "videos").glob("**/*.mp4")):
            size = f.stat().st_size
            h.update(f"{f.relative_to(self.root).as_posix()}\0{size}\0".encode())
            with f.open("rb") as fh:
                h.update(fh.read(_FINGERPRINT_SPAN))
                fh.seek(max(0, size - _FINGERPRINT_SPAN))
                h.update(fh.read(_FINGERPRINT_SPAN))
        return h.hexdigest()[:16]


def load_dataset(root, instruction_key: str = "task", episode_id_key: str = "episode_index",
                 state_key: str = "observation.state", action_key: str = "action",
                 frame_cache_dir: str | Path | None = None, progress: bool = True) -> LeRobotDataset:
    """Load a LeRobot v3 dataset from a local directory; raises DatasetError on unusable input."""
    return LeRobotDataset(root, instruction_key=instruction_key, episode_id_key=episode_id_key,
                          state_key=state_key, action_key=action_key, frame_cache_dir=frame_cache_dir,
                          progress=progress)
