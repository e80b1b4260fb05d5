"""The tables and metadata of a LeRobot v3 dataset: meta/info.json checked, parquet files read with the bad file
named, task names, list columns as matrices, and meta/episodes records; DatasetError for any unusable input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class DatasetError(ValueError):
    """A dataset that cannot be used as asked; raised at load time with the bad input named."""


def parquet_error(path: Path, e: Exception) -> DatasetError:
    return DatasetError(
        f"{path} is not a readable parquet file (truncated or corrupt: {e}); expected the file "
        f"the dataset was written with"
    )


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise parquet_error(path, e) from None


def read_tables(files: list[Path], columns: list[str] | None = None) -> pa.Table:
    tables = [read_table(f, columns) for f in files]
    try:
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except pa.ArrowException as e:
        raise DatasetError(
            f"the parquet files {[str(f) for f in files]} do not share one schema ({e}); expected files of one dataset"
        ) from None


def is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def missing_tasks(root: Path) -> DatasetError:
    """The refusal of a dataset whose data name task_index values but whose task table is gone."""
    return DatasetError(
        f"missing {root / 'meta' / 'tasks.parquet'}, the task table the data's task_index column refers to; "
        f"expected one row per task there, its task_index and its instruction (LeRobot v3: meta/tasks.parquet; "
        f"v2: meta/tasks.jsonl). Restore it from where the dataset came from."
    )


def missing_episode_meta(root: Path, video_keys: list[str] | None = None) -> DatasetError:
    """The refusal of a dataset without its episode table (`video_keys`: the video features that need it)."""
    needs = f", the episode table the video features {video_keys} are read through" if video_keys else ""
    return DatasetError(
        f"missing {root / 'meta' / 'episodes'}/chunk-*/file-*.parquet{needs}; expected one row per episode "
        f"there (LeRobot v3: its length, data file, and each video's file and from/to timestamps). Restore it "
        f"from where the dataset came from."
    )


def read_tasks(root: Path) -> dict[int, str] | None:
    """task_index -> task string, from meta/tasks.parquet (or the older meta/tasks.jsonl)."""
    path = root / "meta" / "tasks.parquet"
    if path.is_file():
        table = read_table(path)
        if "task_index" not in table.column_names:
            raise DatasetError(f"{path} has no task_index column; columns: {table.column_names}")
        # LeRobot writes the task string as the pandas index: named "task", or unnamed when re-saved.
        names = [c for c in ("task", "__index_level_0__") if c in table.column_names]
        names += [
            c
            for c in table.column_names
            if c not in names and c != "task_index" and is_string(table.schema.field(c).type)
        ]
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
                raise DatasetError(
                    f"{path}:{n}: not a task record ({type(e).__name__}: {e}); expected "
                    f'{{"task_index": int, "task": str}} per line'
                ) from None
        return out
    return None


def matrix(table: pa.Table, key: str) -> np.ndarray:
    """A list<float> column as an (N, D) float32 array; ragged rows are an error."""
    col = table.column(key).combine_chunks()
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise DatasetError(f"column {key!r} has type {col.type}; expected a list of floats per frame")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.argmax(lengths != lengths[0]))
        raise DatasetError(
            f"column {key!r} has ragged rows: row 0 has {lengths[0]} values, row {row} has "
            f"{lengths[row]}; expected the same dimension for every frame"
        )
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(col), int(lengths[0]) if len(lengths) else 0)


def read_info(root: Path) -> tuple[dict, int]:
    """meta/info.json of a dataset root, checked, and its fps (a whole number of frames per second)."""
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise DatasetError(
            f"dataset root {root} {what}; expected a LeRobot v3 dataset directory containing meta/info.json"
        )
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetError(f"missing {info_path}; expected a LeRobot v3 dataset with meta/info.json")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(
            f"{info_path} is not valid JSON ({e}); expected the LeRobot v3 dataset description "
            f"(codebase_version, fps, features)"
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get("features", {}), dict):
        raise DatasetError(
            f"{info_path} holds no object with a `features` object; expected the LeRobot v3 "
            f"dataset description (codebase_version, fps, features)"
        )
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(f"{info_path}: codebase_version {version!r} is not supported; expected 'v3.0'")
    fps = info.get("fps", 10)
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not np.isfinite(fps)
        or fps <= 0
        or int(fps) != fps
    ):
        raise DatasetError(f"{info_path}: fps is {fps!r}; expected a positive whole number of frames per second")
    hold = info.get("control_steps_per_frame", 1)
    if isinstance(hold, bool) or not isinstance(hold, int) or hold < 1:
        # Evaluation holds each action this many control steps: 2.5 used to become 2 without a word.
        raise DatasetError(f"{info_path}: control_steps_per_frame is {hold!r}; expected a whole number >= 1")
    return info, int(fps)


def episode_meta(root: Path, prefixes: tuple[str, ...] | None = None) -> dict[int, dict]:
    """episode_index -> its meta/episodes record (only the columns starting with one of `prefixes` when
    given, so the per-episode statistics are left unread) and the file it came from under "_file"."""
    files = sorted((root / "meta" / "episodes").glob("**/*.parquet"))
    if not files:
        raise missing_episode_meta(root)
    out = {}
    for f in files:
        try:
            names = pq.read_schema(f).names
        except (pa.ArrowException, OSError) as e:
            raise parquet_error(f, e) from None
        if "episode_index" not in names:
            raise DatasetError(f"{f} has no episode_index column; columns: {names}")
        table = read_table(
            f, None if prefixes is None else ["episode_index"] + [c for c in names if c.startswith(prefixes)]
        )
        for r in table.to_pylist():
            r["_file"] = f
            out[int(r["episode_index"])] = r
    return out
