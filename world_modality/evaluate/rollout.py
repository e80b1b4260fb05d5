"""One closed-loop episode: reset to a fixed initial state, step the policy through `reset`/`select_action`,
render only the frames the policy or the world encoder will look at."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def run_episode(
    env, runner, init_index: int, replan_every: int, seed: int = 0, record_video: bool = False
) -> dict[str, Any]:
    """-> {success, steps, frames, failure, seconds, video_frames?}. `env` is a `sim.LiberoEnv`, `runner` a
    `PolicyRunner` (or anything with its `reset`, `select_action`, `needs_observation`, `needs_world_frame`,
    `world_input`, `image_keys` and `control_steps_per_frame`)."""
    t0 = time.time()
    runner.reset(seed, instructions=(env.task, getattr(env, "base_instruction", env.task)), replan_every=replan_every)
    obs = env.reset(init_index, render=True)
    video = [] if record_video else None
    frame, success, info = 0, False, {"t": 0}
    while True:
        # A world frame: the world camera (from `obs` when rendered), or the object state for an `env_state` policy.
        world = runner.world_input(env, obs) if runner.needs_world_frame else None
        action = runner.select_action(obs, world)
        if video is not None and obs is not None:  # a new chunk's observation
            video.append(np.concatenate([obs[k] for k in runner.image_keys], axis=1))
        for _ in range(runner.control_steps_per_frame):
            _, done, success, info = env.step(action)
            if done:
                break
        frame += 1
        if done:
            break
        obs = env.observe() if runner.needs_observation else None
    result = {
        "success": bool(success),
        "steps": int(info["t"]),
        "frames": frame,
        "failure": None if success else "timeout",
        "seconds": round(time.time() - t0, 2),
    }
    if video is not None:
        result["video_frames"] = video
    return result
