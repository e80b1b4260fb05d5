"""Which frames an episode must render: the policy looks at replanning frames, the world encoder at
its m frames spaced `stride` apart ending at each replanning frame. Nothing else is rendered."""

from __future__ import annotations


def is_replan_frame(frame: int, replan_every: int) -> bool:
    return frame % replan_every == 0


def is_world_frame(frame: int, replan_every: int, num_frames: int, stride: int) -> bool:
    """True if some replanning frame r >= frame has `frame` in its window r, r-s, ..., r-(m-1)s."""
    return any((frame + j * stride) % replan_every == 0 for j in range(num_frames))


def world_window(frame: int, num_frames: int, stride: int) -> list[int]:
    """Frames of the encoder window ending at `frame`, oldest first; before the episode start they
    repeat frame 0, as training windows repeat an episode's first frame."""
    return [max(frame - j * stride, 0) for j in reversed(range(num_frames))]
