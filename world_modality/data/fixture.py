"""Tiny synthetic LeRobot dataset for tests: a square driven by task-dependent actions toward a goal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .writer import LeRobotWriter

# Goal positions in [0,1]² (x right, y down) and their words; the first two are opposite corners so a
# two-task fixture has the most distinct behaviours.
GOALS = [
    ((0.1, 0.1), "top left corner"),
    ((0.9, 0.9), "bottom right corner"),
    ((0.9, 0.1), "top right corner"),
    ((0.1, 0.9), "bottom left corner"),
    ((0.5, 0.1), "top edge"),
    ((0.5, 0.9), "bottom edge"),
    ((0.1, 0.5), "left edge"),
    ((0.9, 0.5), "right edge"),
]
MAX_STEP = 0.06  # largest per-step move, so a 24-step episode can reach a corner from the centre
GAIN = 0.3
BACKGROUND = (40, 60, 90)
WRIST_BACKGROUND = (90, 70, 40)
SQUARE = (230, 200, 40)


def instruction(task: int) -> str:
    return f"move the block to the {GOALS[task][1]}"


def render(pos: np.ndarray, size: int, background=BACKGROUND) -> np.ndarray:
    """Frames (T,size,size,3) of a square centred at each pos (x, y in [0,1])."""
    half = max(1, size // 10)
    img = np.empty((len(pos), size, size, 3), np.uint8)
    img[:] = np.asarray(background, np.uint8)
    centres = np.round(np.asarray(pos) * (size - 1)).astype(int)
    for t, (cx, cy) in enumerate(centres):
        img[t, max(0, cy - half) : cy + half + 1, max(0, cx - half) : cx + half + 1] = SQUARE
    return img


def simulate(start: np.ndarray, goal: np.ndarray, length: int, rng: np.random.Generator):
    """Roll out the scripted mover: positions (T,2) and actions (T,7) with pos[t+1] = clip(pos[t] + a[t,:2])."""
    pos = np.empty((length, 2))
    act = np.zeros((length, 7))
    pos[0] = start
    for t in range(length):
        v = np.clip(GAIN * (goal - pos[t]), -MAX_STEP, MAX_STEP) + rng.normal(0, 0.003, 2)
        act[t, :2] = v
        act[t, 2:6] = rng.normal(0, 0.002, 4)  # small z/rotation noise, like a real arm's jitter
        # Gripper closes (+1) once near the goal, so the last action dim also depends on the task.
        act[t, 6] = 1.0 if np.linalg.norm(goal - pos[t]) < 0.15 else -1.0
        if t + 1 < length:
            pos[t + 1] = np.clip(pos[t] + v, 0.0, 1.0)
    return pos, act


def environment_state(pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """(T, 14) privileged state in the layout of data/env_state.py: the block's and the goal marker's poses
    (x, y in [0,1], z 0, identity quaternion), objects sorted by name."""
    out = np.zeros((len(pos), 14), np.float32)
    out[:, 0:2], out[:, 3] = pos, 1.0
    out[:, 7:9], out[:, 10] = goal, 1.0
    return out


def make_fixture_dataset(
    root,
    n_episodes: int = 8,
    length: int = 24,
    image_size: int = 32,
    n_tasks: int = 2,
    seed: int = 0,
    use_videos: bool = False,
    instruction_column: str | None = None,
    with_environment_state: bool = False,
) -> Path:
    """Write a deterministic synthetic dataset; episodes cycle through tasks 0..n_tasks-1. With
    `with_environment_state`, frames also record `observation.environment_state` (`environment_state`), so the
    `env_state` world encoder can be tested without the simulator."""
    from .env_state import ENV_STATE_KEY, state_names

    if not 1 <= n_tasks <= len(GOALS):
        raise ValueError(f"n_tasks must be in 1..{len(GOALS)}, got {n_tasks}")
    if n_episodes < 1 or length < 2:
        raise ValueError(f"need n_episodes>=1 and length>=2, got {n_episodes}, {length}")
    rng = np.random.default_rng(seed)
    extra = {ENV_STATE_KEY: state_names(["block_1", "goal_1"], [])} if with_environment_state else None
    writer = LeRobotWriter(
        root,
        fps=10,
        image_size=image_size,
        use_videos=use_videos,
        instruction_column=instruction_column,
        overwrite=True,
        extra_features=extra,
    )
    with writer:
        for ep in range(n_episodes):
            task = ep % n_tasks
            goal = np.asarray(GOALS[task][0])
            pos, act = simulate(rng.uniform(0.35, 0.65, 2), goal, length, rng)
            state = np.zeros((length, 8), np.float32)
            state[:, :2] = pos
            open_ = act[:, 6] < 0
            state[:, 6], state[:, 7] = np.where(open_, 0.04, 0.0), np.where(open_, -0.04, 0.0)
            images = {
                "observation.images.image": render(pos, image_size),
                # The wrist view is the scene mirrored, on a different background, like a second camera.
                "observation.images.wrist_image": np.ascontiguousarray(
                    render(pos, image_size, WRIST_BACKGROUND)[:, ::-1]
                ),
            }
            more = {ENV_STATE_KEY: environment_state(pos, goal)} if with_environment_state else None
            writer.add_episode(images, state, act.astype(np.float32), instruction(task), extra=more)
        return writer.finalize()
