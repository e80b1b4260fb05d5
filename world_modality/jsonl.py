"""The one tolerant JSON-lines reader: episodes, metrics and progress files are appended to, so a kill
mid-append can leave a torn last line that readers skip and count."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Records and the number of unreadable lines (a kill mid-append can leave a torn last line)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    out, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    return out, bad
