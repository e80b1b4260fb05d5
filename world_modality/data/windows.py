"""Episode-bounded row windows: past frames per latent, the future frame, and action chunks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowSpec:
    num_frames: int = 4  # m past frames per latent (t-(m-1)s .. t)
    frame_stride: int = 1  # s, in dataset frames
    future_offset: int = 1  # k, in dataset frames
    chunk_size: int = 8  # H actions a_t..a_{t+H-1}

    def __post_init__(self):
        if self.num_frames < 1 or self.frame_stride < 1 or self.future_offset < 0 or self.chunk_size < 1:
            raise ValueError(
                f"invalid WindowSpec {self}: need num_frames>=1, frame_stride>=1, future_offset>=0, chunk_size>=1"
            )


def episode_bounds(episodes: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (row, episode start, episode end) for episodes that tile rows 0..N-1 in order."""
    starts = np.array([e.start for e in episodes], dtype=np.int64)
    ends = np.array([e.end for e in episodes], dtype=np.int64)
    if len(starts) == 0:
        return (np.zeros(0, np.int64),) * 3
    # Windows index rows directly, so a gap or overlap would silently mix episodes.
    if starts[0] != 0 or (ends <= starts).any() or (starts[1:] != ends[:-1]).any():
        raise ValueError("episodes must be non-empty and tile rows 0..N-1 contiguously in order")
    lengths = ends - starts
    return np.arange(ends[-1], dtype=np.int64), np.repeat(starts, lengths), np.repeat(ends, lengths)


def past_frame_rows(episodes: Sequence, spec: WindowSpec) -> np.ndarray:
    """(N, m) rows t-(m-1)s .. t, oldest first; rows before the episode start repeat its first frame."""
    rows, start, _ = episode_bounds(episodes)
    offsets = (np.arange(spec.num_frames, dtype=np.int64) - (spec.num_frames - 1)) * spec.frame_stride
    return np.maximum(rows[:, None] + offsets[None, :], start[:, None])


def future_rows(episodes: Sequence, spec: WindowSpec) -> np.ndarray:
    """(N,) row t+k, clamped to the episode's last row: after the end the robot stays where it ended."""
    rows, _, end = episode_bounds(episodes)
    return np.minimum(rows + spec.future_offset, end - 1)


def action_chunk_rows(episodes: Sequence, spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """(N,H) rows t..t+H-1 clamped to the episode end, and (N,H) mask, False for steps past the end."""
    rows, _, end = episode_bounds(episodes)
    raw = rows[:, None] + np.arange(spec.chunk_size, dtype=np.int64)[None, :]
    mask = raw < end[:, None]
    return np.minimum(raw, end[:, None] - 1), mask
