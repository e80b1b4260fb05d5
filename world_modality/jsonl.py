"""The one tolerant JSON-lines reader: episodes, metrics and progress files are appended to, so a kill
mid-append can leave a torn last line that readers skip and count."""

from __future__ import annotations

import json
from pathlib import Path


def parse_line(line: str) -> dict | None:
    """One record, or None for a line that is not a JSON object (a torn tail, a foreign line)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Records and the number of unreadable lines (a kill mid-append can leave a torn last line)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    out, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = parse_line(line)
        if rec is None:
            bad += 1
        else:
            out.append(rec)
    return out, bad
