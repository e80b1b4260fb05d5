"""The dataset fingerprint that keys every cache: a content hash of a LeRobot v3 dataset's metadata and tabular
files, whole, and of each video's path, size and first and last MiB.

meta/info.json's "provenance" (the commit that wrote the dataset, `writer.py`) is no part of the data: a file
holding it is hashed as the writer would have written it without it, so the same data from another commit
fingerprints the same, and a dataset written before provenance existed keeps its fingerprint (its bytes are
hashed as they are)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FINGERPRINT_SPAN = 1 << 20  # bytes read from each end of a video for the dataset fingerprint


def dataset_fingerprint(root: Path, data_files: list[Path]) -> str:
    """Content hash (16 hex chars) of metadata, tabular data, and each video's path, size and
    first and last MiB."""
    h = hashlib.sha256()
    files = sorted(set((root / "meta").glob("*.json")) | set((root / "meta").glob("**/*.parquet")) | set(data_files))
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(_without_provenance(f.read_bytes()) if f == root / "meta" / "info.json" else f.read_bytes())
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


def _without_provenance(data: bytes) -> bytes:
    """info.json's bytes without its "provenance" entry, in the writer's layout (indent 4); the bytes as they are
    when it has none or is not a JSON object (the loader names a broken file)."""
    try:
        info = json.loads(data)
    except ValueError:
        return data
    if not isinstance(info, dict) or "provenance" not in info:
        return data
    info.pop("provenance")
    return json.dumps(info, indent=4).encode()
