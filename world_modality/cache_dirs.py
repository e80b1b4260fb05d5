"""Where derived caches (decoded frames, world latents) live: beside the dataset, else, when the
dataset folder is read-only (a shared or hub-cache copy), in the user's cache folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def user_cache_dir(kind: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "world_modality" / kind


def default_dirs(dataset_root: str | os.PathLike, kind: str) -> list[Path]:
    """Folders for a cache of `kind`, first choice first."""
    return [Path(dataset_root) / ".cache" / kind, user_cache_dir(kind)]


def writable(folder: Path) -> bool:
    """Whether files can be made in `folder`: tried with a temporary file, not inferred from
    permission bits (a read-only mount passes them, and root passes every check)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError:
        return False
    return True


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on `path`, so processes started together (one per GPU, one per evaluation
    worker) build a cache once instead of each building it."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
