"""Which code produced a result: the checkout's commit, marked dirty when the code has uncommitted changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_commit(paths: tuple[str, ...] = ("world_modality",)) -> str:
    """Short commit of the checkout this package runs from, '-dirty' when `paths` (relative to the checkout) have
    uncommitted changes; 'unknown' when it is not a git checkout (an installed wheel) or git is missing."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        if not (ROOT / ".git").exists():
            return "unknown"
        dirty = git("status", "--porcelain", "--", *paths)
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
