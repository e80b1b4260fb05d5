"""Which code produced a result: the checkout's commit, and whether the code had uncommitted changes.

Provenance is recorded beside a result, never in its identity: a later commit may continue an evaluation, a
training run or a generation, and what it records says so instead of refusing it. A record that several
commits wrote is `{"commit": <the first>, "dirty": <its flag>, "continued_by": [{"commit", "dirty"}, ...]}`:
every later (commit, dirty) pair that wrote into it, in the order they first did, each listed once
(`continued`). Evaluation folders (settings.json), training runs (config.json, each checkpoint's
trainer_state.json) and generated datasets (meta/info.json) hold it under the key "provenance", with the software
stacks that wrote into them under "toolchains" (`continued_with_toolchain`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "unknown"


def provenance(paths: tuple[str, ...] = ("world_modality",)) -> dict:
    """{"commit": short commit of the checkout this package runs from, "dirty": whether `paths` (relative to the
    checkout) have uncommitted changes}; commit 'unknown' and dirty None when it is not a git checkout (an
    installed wheel) or git is missing."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        if not (ROOT / ".git").exists():
            return {"commit": UNKNOWN, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--", *paths))
        return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": UNKNOWN, "dirty": None}


def code_commit(paths: tuple[str, ...] = ("world_modality",)) -> str:
    """Short commit of the checkout this package runs from, '-dirty' when `paths` (relative to the checkout) have
    uncommitted changes; 'unknown' when it is not a git checkout (an installed wheel) or git is missing."""
    return label(provenance(paths))


def label(record: dict) -> str:
    """One (commit, dirty) record as one word: '<commit>' or '<commit>-dirty'."""
    return str(record.get("commit", UNKNOWN)) + ("-dirty" if record.get("dirty") else "")


def continued(old: dict | None, now: dict) -> dict:
    """The provenance of a record `now`'s code writes into, after `old` (its recorded provenance, None when the
    record is new): `now` alone, or `old` with `now` appended to continued_by unless it is already listed."""
    entry = {"commit": now.get("commit", UNKNOWN), "dirty": now.get("dirty")}
    if not isinstance(old, dict) or "commit" not in old:
        return {**entry, "continued_by": []}
    later = [dict(e) for e in old.get("continued_by") or [] if isinstance(e, dict)]
    seen = [{"commit": old["commit"], "dirty": old.get("dirty")}, *later]
    return {
        "commit": old["commit"],
        "dirty": old.get("dirty"),
        "continued_by": later + ([entry] if entry not in seen else []),
    }


def continued_with_toolchain(old: dict | None, now: dict) -> dict:
    """`continued(old, now)` plus "toolchains": `old`'s software stacks (toolchain.py) with this process's appended
    unless listed, since the same code under another mujoco or torch writes other bytes."""
    from .toolchain import appended

    return {**continued(old, now), "toolchains": appended(old.get("toolchains") if isinstance(old, dict) else None)}


def commits(record: dict | None) -> list[str]:
    """Every commit a provenance record names, first one first, as `label` words; [] for no record."""
    if not isinstance(record, dict) or "commit" not in record:
        return []
    return [label(record)] + [label(e) for e in record.get("continued_by") or [] if isinstance(e, dict)]
