"""On-disk cache of decoded, resized camera frames: one .npy file per (dataset, camera, size),
built once by streaming decoded frames into it and then opened as a read-only memory map."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cache_dirs import locked, writable
from ..images import resize_frames

# Bump when the bytes a given (dataset, camera, size) maps to change (decoder matching, resize op).
FORMAT = 1
# Frames resized together: torch's per-call overhead dominates single small frames.
RESIZE_BATCH = 32

FrameStream = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


class FrameCacheError(ValueError):
    """A frame cache that cannot be built or does not hold what its name promises."""


def cache_name(fingerprint: str, key: str, size: int | None, row_order: np.ndarray) -> str:
    """Readable prefix + 16-hex hash of everything the bytes depend on (the prefix alone is not unique)."""
    order = np.ascontiguousarray(row_order, dtype=np.int64)
    ident = json.dumps([FORMAT, fingerprint, key, size, len(order), hashlib.sha256(order.tobytes()).hexdigest()])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    cam = re.sub(r"[^A-Za-z0-9_-]+", "_", key.rsplit(".", 1)[-1])
    return f"{cam}-{'native' if size is None else f's{size}'}-{digest}"


def _open(path: Path, n_rows: int, size: int | None) -> np.memmap:
    # The name hashes everything the bytes depend on, so a file under it that does not open as the
    # expected array is damaged, and deleting it is the fix.
    try:
        frames = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise FrameCacheError(
            f"frame cache {path} is unreadable (truncated or corrupt: {e}); delete the file to rebuild it"
        ) from None
    ok = frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == n_rows and frames.shape[-1] == 3
    if ok and size is not None:
        ok = frames.shape[1:3] == (size, size)
    if not ok:
        want = f"({n_rows}, {size or 'H'}, {size or 'W'}, 3) uint8"
        raise FrameCacheError(
            f"frame cache {path} holds {frames.dtype} {frames.shape}, expected {want}; delete the file to rebuild it"
        )
    return frames


def open_or_build(
    name: str,
    dirs: list[Path],
    n_rows: int,
    size: int | None,
    stream: FrameStream,
    desc: str = "frames",
    progress: bool = True,
) -> np.memmap:
    """The cache `name` from the first of `dirs` that has it; else built in the first writable one.

    `stream()` yields (rows, frame): one decoded (H, W, 3) uint8 frame and the int rows it fills;
    it is called only to build, and every row must be filled exactly by then.
    """
    for folder in dirs:
        path = folder / f"{name}.npy"
        if path.is_file():
            return _open(path, n_rows, size)
    folder = next((d for d in dirs if writable(d)), None)
    if folder is None:
        raise FrameCacheError(f"no writable folder for the frame cache {name}; tried {[str(d) for d in dirs]}")
    path = folder / f"{name}.npy"
    with locked(folder / f".{name}.lock"):
        if path.is_file():  # built by another process while this one waited for the lock
            return _open(path, n_rows, size)
        # Under the lock no live builder owns a temporary file: any left is from a killed build.
        for stale in folder.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            _build(tmp, n_rows, size, stream, desc, progress)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    return _open(path, n_rows, size)


class _NpyWriter:
    """Writes rows of a (N, H, W, 3) uint8 .npy file in any order, with positioned writes rather than a
    writable memory map, so the process holds no more than the rows being written."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = path, shape
        self.row_bytes = int(np.prod(shape[1:]))
        self.f = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.f, header)
        self.f.flush()
        self.offset = self.f.tell()
        total = self.offset + shape[0] * self.row_bytes
        try:
            # Reserve the space now: a full disk fails here, with the size named, not half-way through.
            os.posix_fallocate(self.f.fileno(), 0, total)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                self.f.close()
                raise FrameCacheError(
                    f"cannot reserve {total / 2**30:.2f} GiB for the frame cache {path}: {e}; "
                    f"free that much space there"
                ) from e
            # A file system without preallocation: the writes below still fail cleanly if space runs out.

    def write(self, row: int, frame: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(frame)).cast("B")
        at = self.offset + row * self.row_bytes
        while data:  # pwrite may write less than asked (signals, some network file systems)
            n = os.pwrite(self.f.fileno(), data, at)
            data, at = data[n:], at + n

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _build(tmp: Path, n_rows: int, size: int | None, stream: FrameStream, desc: str, progress: bool) -> None:
    writer: _NpyWriter | None = None
    filled = np.zeros(n_rows, dtype=bool)
    bar = tqdm(total=n_rows, desc=desc, unit="frame", disable=not progress)
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        nonlocal writer
        shapes = {f.shape for _, f in pending}
        if len(shapes) > 1:
            raise FrameCacheError(
                f"{desc}: decoded frames of different sizes {sorted(shapes)}; expected one size per camera"
            )
        small = resize_frames(np.stack([f for _, f in pending]), size)
        if writer is None:
            writer = _NpyWriter(tmp, (n_rows,) + small.shape[1:])
        elif small.shape[1:] != writer.shape[1:]:
            raise FrameCacheError(
                f"{desc}: a frame resized to {small.shape[1:]} but earlier ones to "
                f"{writer.shape[1:]}; expected one size per camera"
            )
        for (rows, _), img in zip(pending, small):
            for r in rows:
                writer.write(int(r), img)
            filled[rows] = True
            bar.update(len(rows))
        pending.clear()

    try:
        for rows, frame in stream():
            rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
            if len(rows):
                pending.append((rows, frame))
            if len(pending) >= RESIZE_BATCH:
                flush()
        if pending:
            flush()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if writer is None or not filled.all():
        missing = np.flatnonzero(~filled)
        raise FrameCacheError(
            f"{desc}: {len(missing)} of {n_rows} rows got no frame (first: row "
            f"{missing[0] if len(missing) else '-'}); expected every row to be filled"
        )
