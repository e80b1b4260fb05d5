"""Read a local LeRobot v3 dataset into per-frame arrays, refusing inputs that would train silently wrong:
unreadable files are named, and meta/episodes must agree with the data rows and the video files
(every episode's rows, span and video length) before any frame is decoded."""
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
from .frames import native_frame_sizes
from .video import iter_video_frames, video_length


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


def _parquet_error(path: Path, e: Exception) -> DatasetError:
    return DatasetError(f"{path} is not a readable parquet file (truncated or corrupt: {e}); expected the file "
                        f"the dataset was written with")


def _read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, e) from None


def _read_tables(files: list[Path], columns: list[str] | None = None) -> pa.Table:
    tables = [_read_table(f, columns) for f in files]
    try:
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except pa.ArrowException as e:
        raise DatasetError(f"the parquet files {[str(f) for f in files]} do not share one schema ({e}); "
                           f"expected files of one dataset") from None


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _read_tasks(root: Path) -> dict[int, str] | None:
    """task_index -> task string, from meta/tasks.parquet (or the older meta/tasks.jsonl)."""
    path = root / "meta" / "tasks.parquet"
    if path.is_file():
        table = _read_table(path)
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
        out = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[int(row["task_index"])] = str(row.get("task", ""))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"{path}:{n}: not a task record ({type(e).__name__}: {e}); expected "
                                   f'{{"task_index": int, "task": str}} per line') from None
        return out
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
            what = "is a file" if self.root.exists() else "does not exist"
            raise DatasetError(f"dataset root {self.root} {what}; expected a LeRobot v3 dataset directory "
                               f"containing meta/info.json")
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(f"missing {info_path}; expected a LeRobot v3 dataset with meta/info.json")
        try:
            self.info: dict = json.loads(info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{info_path} is not valid JSON ({e}); expected the LeRobot v3 dataset description "
                               f"(codebase_version, fps, features)") from None
        if not isinstance(self.info, dict) or not isinstance(self.info.get("features", {}), dict):
            raise DatasetError(f"{info_path} holds no object with a `features` object; expected the LeRobot v3 "
                               f"dataset description (codebase_version, fps, features)")
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise DatasetError(f"{info_path}: codebase_version {version!r} is not supported; expected 'v3.0'")
        fps = self.info.get("fps", 10)
        if (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0
                or int(fps) != fps):
            raise DatasetError(f"{info_path}: fps is {fps!r}; expected a positive whole number of frames per second")
        self.fps = int(fps)
        hold = self.info.get("control_steps_per_frame", 1)
        if isinstance(hold, bool) or not isinstance(hold, int) or hold < 1:
            # Evaluation holds each action this many control steps: 2.5 used to become 2 without a word.
            raise DatasetError(f"{info_path}: control_steps_per_frame is {hold!r}; expected a whole number >= 1")
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
            raise _parquet_error(self._data_files[0], e) from None
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
        self._check_episode_rows()

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
            if not inline:
                # Spans against the files' lengths: checked each time, also when the frames are cached.
                queries = self._video_queries(key)
            stream = (lambda: self._inline_frames(key)) if inline else (lambda: self._video_frames(key, queries))
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
            try:
                batches = pq.ParquetFile(f).iter_batches(batch_size=64, columns=[key])
                for batch in batches:
                    for v in batch.column(0).to_pylist():
                        data = v.get("bytes") if isinstance(v, dict) else v
                        if data is None and isinstance(v, dict) and v.get("path"):
                            data = (self.root / v["path"]).read_bytes()
                        try:
                            image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                        except (OSError, TypeError) as e:
                            raise DatasetError(f"{f}: the {key!r} image of source row {src} cannot be decoded "
                                               f"({type(e).__name__}: {e}); expected PNG or JPEG bytes") from None
                        if src == 0:
                            self._check_frame_size(key, image.shape[:2], f)
                        yield row_of_source[src:src + 1], image
                        src += 1
            except (pa.ArrowException, OSError) as e:
                raise _parquet_error(f, e) from None

    def _episode_meta(self, prefixes: tuple[str, ...] | None = None) -> dict[int, dict]:
        """episode_index -> its meta/episodes record (only the columns starting with one of `prefixes` when
        given, so the per-episode statistics are left unread) and the file it came from under "_file"."""
        files = sorted((self.root / "meta" / "episodes").glob("**/*.parquet"))
        if not files:
            raise DatasetError(f"no episode metadata under {self.root / 'meta' / 'episodes'}; "
                               f"expected meta/episodes/chunk-*/file-*.parquet for video features")
        out = {}
        for f in files:
            try:
                names = pq.read_schema(f).names
            except (pa.ArrowException, OSError) as e:
                raise _parquet_error(f, e) from None
            if "episode_index" not in names:
                raise DatasetError(f"{f} has no episode_index column; columns: {names}")
            table = _read_table(f, None if prefixes is None else
                                ["episode_index"] + [c for c in names if c.startswith(prefixes)])
            for r in table.to_pylist():
                r["_file"] = f
                out[int(r["episode_index"])] = r
        return out

    def _check_episode_rows(self) -> None:
        """meta/episodes and the data rows describe the same episodes: a data file left out of a copy, or
        an episode cut short, used to train on what was left without a word."""
        if self._episode_index is None or not (self.root / "meta" / "episodes").is_dir():
            return
        if not any((self.root / "meta" / "episodes").glob("**/*.parquet")):
            return
        metas = self._episode_meta(("length", "dataset_from_index", "dataset_to_index", "data/"))
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
                where = " (" + str(self.root / template.format(chunk_index=int(m["data/chunk_index"]),
                                                              file_index=int(m["data/file_index"]))) + ")"
            raise DatasetError(f"episodes {absent[:10]} are listed in {m['_file']} but have no rows in the data files "
                               f"under {self.root / 'data'}; expected the data file that holds episode {absent[0]}"
                               f"{where}")
        for ep, n in rows.items():
            m = metas.get(ep)
            if m is None:
                continue  # an episode without metadata is named when its video is looked up
            length = m.get("length")
            if length is not None and int(length) != n:
                raise DatasetError(f"episode {ep} has {n} rows in the data files but {m['_file']} gives it length "
                                   f"{int(length)}; expected them to agree")
            lo, hi = m.get("dataset_from_index"), m.get("dataset_to_index")
            if lo is not None and hi is not None and int(hi) - int(lo) != n:
                raise DatasetError(f"episode {ep} has {n} rows in the data files but {m['_file']} gives it rows "
                                   f"[{int(lo)}, {int(hi)}); expected them to agree")

    def _video_queries(self, key: str) -> dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per video file (in row order): the rows it holds, their times in the file, their episodes;
        sorted by time."""
        if self._episode_index is None:
            raise DatasetError(f"video feature {key!r} needs an 'episode_index' data column to find its files")
        metas = self._episode_meta((f"videos/{key}/",))
        template = self.info.get("video_path") or \
            "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        parts: dict[Path, list] = {}
        spans: dict[Path, list[tuple[int, float, float]]] = {}
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
            start = float(m[f"videos/{key}/from_timestamp"])
            end = m.get(f"videos/{key}/to_timestamp")
            query = start + self.timestamp[ep.start:ep.end]
            if end is not None:
                self._check_span(key, path, ep_index, ep.length, start, float(end), query, m["_file"])
                spans.setdefault(path, []).append((ep_index, start, float(end)))
            parts.setdefault(path, []).append((np.arange(ep.start, ep.end), query, np.full(ep.length, ep_index)))
        for path, eps in spans.items():
            self._check_video_length(key, path, eps)
        out = {}
        for path, p in parts.items():
            rows, query, eps = (np.concatenate(x) for x in zip(*p))
            order = np.argsort(query, kind="stable")
            out[path] = rows[order], query[order], eps[order]
        return out

    def _check_span(self, key: str, path: Path, ep: int, n_rows: int, start: float, end: float,
                    query: np.ndarray, meta_file: Path) -> None:
        """An episode's video span [from_timestamp, to_timestamp) holds one frame per data row, and its rows'
        times lie inside it (LeRobot writes to_timestamp = from_timestamp + length / fps)."""
        tol = 0.5 / self.fps
        frames = (end - start) * self.fps
        if abs(frames - n_rows) > 0.5:
            raise DatasetError(f"episode {ep}: {meta_file} gives {key!r} the span [{start:.3f}, {end:.3f}) s of "
                               f"{path}, {frames:.1f} frames at {self.fps} fps, but the data hold {n_rows} rows; "
                               f"expected one frame per row")
        if len(query) and (query[0] < start - tol or query[-1] > end - 1 / self.fps + tol):
            raise DatasetError(f"episode {ep}: its rows' timestamps reach [{query[0]:.3f}, {query[-1]:.3f}] s in "
                               f"{path}, outside its span [{start:.3f}, {end:.3f}) s in {meta_file}; expected "
                               f"timestamps from 0 at {self.fps} fps")

    def _check_video_length(self, key: str, path: Path, spans: list[tuple[int, float, float]]) -> None:
        """Every episode span lies inside the video file (read from its header, nothing decoded)."""
        try:
            n_frames, seconds, size = video_length(path)
        except ValueError as e:
            raise DatasetError(f"video file {path} of {key!r} cannot be read ({e}); expected an mp4 with a video "
                               f"stream") from None
        self._check_frame_size(key, size, path)
        if seconds is None:
            return  # the container does not say: decoding checks each row's frame (_check_gap)
        ep, start, end = max(spans, key=lambda s: s[2])
        if end > seconds + 0.5 / self.fps:
            count = f"{n_frames} frames, " if n_frames else ""
            raise DatasetError(f"episode {ep}: meta/episodes gives {key!r} the span [{start:.3f}, {end:.3f}) s, "
                               f"past the end of its video file {path} ({count}{seconds:.3f} s); expected every "
                               f"episode inside its video file")

    def _check_frame_size(self, key: str, size: tuple[int, int], path: Path) -> None:
        """Frames of the size meta/info.json declares: a checkpoint records that size and closed-loop
        evaluation renders at it, so frames of another size would train on other pixels than it acts on."""
        try:
            declared = native_frame_sizes(self.features, [key])
        except ValueError:
            return  # no usable declaration; images() readers that need one say so
        declared = tuple(declared[key]) if isinstance(declared, dict) else (declared, declared)
        if tuple(size) != declared:
            raise DatasetError(f"{path} holds {size[0]}x{size[1]} frames of {key!r} but meta/info.json features "
                               f"declare {declared[0]}x{declared[1]}; expected them to agree")

    def _video_frames(self, key: str, queries: dict | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, frame): each decoded frame with the rows whose time it is nearest to, as LeRobot itself
        matches rows to video frames (ties go to the earlier frame). One file is open at a time and only
        two decoded frames are held, so memory does not grow with the file or the camera."""
        for path, (rows, query, eps) in (queries if queries is not None else self._video_queries(key)).items():
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
