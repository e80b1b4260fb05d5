"""Frames of a LeRobot v3 dataset's image features: inline PNG/JPEG bytes decoded a parquet batch at a time, and
video frames matched to data rows by time as LeRobot matches them, with every episode's span checked against its
video file before a frame is decoded."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .frames import native_frame_sizes
from .lerobot_tables import DatasetError, parquet_error
from .video import iter_video_frames, video_length


def inline_frames(
    root: Path, data_files: list[Path], order: np.ndarray, key: str, features: dict
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row, image) for every row, read one parquet batch at a time."""
    row_of_source = np.empty_like(order)
    row_of_source[order] = np.arange(len(order))
    src = 0
    for f in data_files:
        try:
            batches = pq.ParquetFile(f).iter_batches(batch_size=64, columns=[key])
            for batch in batches:
                for v in batch.column(0).to_pylist():
                    data = v.get("bytes") if isinstance(v, dict) else v
                    if data is None and isinstance(v, dict) and v.get("path"):
                        data = (root / v["path"]).read_bytes()
                    try:
                        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    except (OSError, TypeError) as e:
                        raise DatasetError(
                            f"{f}: the {key!r} image of source row {src} cannot be decoded "
                            f"({type(e).__name__}: {e}); expected PNG or JPEG bytes"
                        ) from None
                    if src == 0:
                        check_frame_size(key, image.shape[:2], f, features)
                    yield row_of_source[src : src + 1], image
                    src += 1
        except (pa.ArrowException, OSError) as e:
            raise parquet_error(f, e) from None


def check_span(
    key: str, path: Path, ep: int, n_rows: int, start: float, end: float, query: np.ndarray, meta_file: Path, fps: int
) -> None:
    """An episode's video span [from_timestamp, to_timestamp) holds one frame per data row, and its rows'
    times lie inside it (LeRobot writes to_timestamp = from_timestamp + length / fps)."""
    tol = 0.5 / fps
    frames = (end - start) * fps
    if abs(frames - n_rows) > 0.5:
        raise DatasetError(
            f"episode {ep}: {meta_file} gives {key!r} the span [{start:.3f}, {end:.3f}) s of "
            f"{path}, {frames:.1f} frames at {fps} fps, but the data hold {n_rows} rows; "
            f"expected one frame per row"
        )
    if len(query) and (query[0] < start - tol or query[-1] > end - 1 / fps + tol):
        raise DatasetError(
            f"episode {ep}: its rows' timestamps reach [{query[0]:.3f}, {query[-1]:.3f}] s in "
            f"{path}, outside its span [{start:.3f}, {end:.3f}) s in {meta_file}; expected "
            f"timestamps from 0 at {fps} fps"
        )


def check_video_length(key: str, path: Path, spans: list[tuple[int, float, float]], fps: int, features: dict) -> None:
    """Every episode span lies inside the video file (read from its header, nothing decoded)."""
    try:
        n_frames, seconds, size = video_length(path)
    except ValueError as e:
        raise DatasetError(
            f"video file {path} of {key!r} cannot be read ({e}); expected an mp4 with a video stream"
        ) from None
    check_frame_size(key, size, path, features)
    if seconds is None:
        return  # the container does not say: decoding checks each row's frame (_check_gap)
    ep, start, end = max(spans, key=lambda s: s[2])
    if end > seconds + 0.5 / fps:
        count = f"{n_frames} frames, " if n_frames else ""
        raise DatasetError(
            f"episode {ep}: meta/episodes gives {key!r} the span [{start:.3f}, {end:.3f}) s, "
            f"past the end of its video file {path} ({count}{seconds:.3f} s); expected every "
            f"episode inside its video file"
        )


def check_frame_size(key: str, size: tuple[int, int], path: Path, features: dict) -> None:
    """Frames of the size meta/info.json declares: a checkpoint records that size and closed-loop
    evaluation renders at it, so frames of another size would train on other pixels than it acts on."""
    try:
        declared = native_frame_sizes(features, [key])
    except ValueError:
        return  # no usable declaration; images() readers that need one say so
    declared = tuple(declared[key]) if isinstance(declared, dict) else (declared, declared)
    if tuple(size) != declared:
        raise DatasetError(
            f"{path} holds {size[0]}x{size[1]} frames of {key!r} but meta/info.json features "
            f"declare {declared[0]}x{declared[1]}; expected them to agree"
        )


def video_frames(key: str, queries: dict, fps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, frame): each decoded frame with the rows whose time it is nearest to, as LeRobot itself
    matches rows to video frames (ties go to the earlier frame). One file is open at a time and only
    two decoded frames are held, so memory does not grow with the file or the camera."""
    for path, (rows, query, eps) in queries.items():
        i, prev, prev_rows = 0, None, []
        for t, frame in iter_video_frames(path):
            # Queries up to t lie between the previous frame and this one: each takes the nearer.
            j = int(np.searchsorted(query, t, side="right"))
            if j > i:
                q = query[i:j]
                t_prev = prev[0] if prev is not None else -np.inf  # before the first frame: take it
                take_prev = q - t_prev <= t - q
                check_gap(path, np.where(take_prev, q - t_prev, t - q), q, eps[i:j], fps)
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
            check_gap(path, q - prev[0], q, eps[i:], fps)
            prev_rows.append(rows[i:])
        yield np.concatenate(prev_rows) if prev_rows else np.empty(0, np.int64), prev[1]


def check_gap(path: Path, gap: np.ndarray, query: np.ndarray, eps: np.ndarray, fps: int) -> None:
    if (gap > 0.5 / fps).any():
        k = int(np.argmax(gap))
        raise DatasetError(
            f"video {path} has no frame near t={query[k]:.3f}s for episode "
            f"{eps[k]}; expected one frame per data row at {fps} fps"
        )
