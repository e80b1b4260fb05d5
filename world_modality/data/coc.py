"""Chain-of-causation annotations: read a JSONL of per-frame texts and join it to dataset rows."""

from __future__ import annotations

import json
from pathlib import Path


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message names the file and line."""


def read_annotations(path) -> dict[tuple[int, int], str]:
    """{(episode_index, frame_index): text} from lines {"episode_index", "frame_index", "text"}."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"chain-of-causation file not found: {path}")
    out: dict[tuple[int, int], str] = {}
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (int(rec["episode_index"]), int(rec["frame_index"]))
                text = rec["text"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise AnnotationError(
                    f"{path}:{lineno}: malformed annotation ({e!r}); expected "
                    f'{{"episode_index": int, "frame_index": int, "text": str}}'
                ) from None
            if not isinstance(text, str):
                raise AnnotationError(f"{path}:{lineno}: text must be a string, got {type(text).__name__}")
            # Later lines win, so an appended correction replaces an earlier annotation.
            out[key] = text
    return out


def join_annotations(dataset, ann: dict[tuple[int, int], str]) -> tuple[list[str | None], int]:
    """Per-row annotation text (None where absent) and the number of rows without one."""
    texts = [ann.get((int(e), int(f))) for e, f in zip(dataset.episode_ids, dataset.frame_index)]
    return texts, sum(t is None for t in texts)
