"""The dataset fingerprint that keys every cache: a content hash of a LeRobot v3 dataset's metadata and tabular
files, whole, and of each video's path, size and first and last MiB."""

from __future__ import annotations

import hashlib
from pathlib import Path

FINGERPRINT_SPAN = 1 << 20  # bytes read from each end of a video for the dataset fingerprint


def dataset_fingerprint(root: Path, data_files: list[Path]) -> str:
    """Content hash (16 hex chars) of metadata, tabular data, and each video's path, size and
    first and last MiB."""
    h = hashlib.sha256()
    files = sorted(set((root / "meta").glob("*.json")) | set((root / "meta").glob("**/*.parquet")) | set(data_files))
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    # Videos are large: their size, first and last MiB stand in for their content. The last MiB
    # holds the mp4 index (every frame's size), so a re-encode of the same total size still shows.
    for f in sorted((root / "videos").glob("**/*.mp4")):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(FINGERPRINT_SPAN))
            fh.seek(max(0, size - FINGERPRINT_SPAN))
            h.update(fh.read(FINGERPRINT_SPAN))
    return h.hexdigest()[:16]
