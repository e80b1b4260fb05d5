"""One closed-loop episode: reset to a fixed initial state, replan every few frames, render only the
frames the policy or the world encoder will look at."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .schedule import is_replan_frame, is_world_frame, world_window


def run_episode(env, runner, init_index: int, replan_every: int, seed: int = 0, record_video: bool = False) -> dict[str, Any]:
    """-> {success, steps, frames, failure, seconds, video_frames?}. `env` is a `sim.LiberoEnv`,
    `runner` a `PolicyRunner` (or anything with its attributes and `act`)."""
    t0 = time.time()
    runner.reset(seed, instructions=(env.task, getattr(env, "base_instruction", env.task)))
    m, s = runner.num_frames, runner.frame_stride
    cspf = runner.control_steps_per_frame
    obs = env.reset(init_index, render=True)
    # A world frame: the world camera, or the object state for an `env_state` policy (runner.world_input).
    read = getattr(runner, "world_input", None) or (lambda e, o=None: o[runner.world_key] if o is not None
                                                    else e.render(runner.world_key))
    world = {0: read(env, obs)} if runner.uses_world else {}
    video = [] if record_video else None
    frame, done, success, chunk = 0, False, False, None
    while not done:
        if is_replan_frame(frame, replan_every):
            frames = np.stack([world[f] for f in world_window(frame, m, s)]) if runner.uses_world else None
            chunk = runner.act(obs, frames)
            if video is not None:
                video.append(np.concatenate([obs[k] for k in runner.image_keys], axis=1))
        action = chunk[frame % replan_every]
        for _ in range(cspf):
            _, done, success, info = env.step(action)
            if done:
                break
        frame += 1
        if done:
            break
        if is_replan_frame(frame, replan_every):
            obs = env.observe()
            if runner.uses_world:
                world[frame] = read(env, obs)
        elif runner.uses_world and is_world_frame(frame, replan_every, m, s):
            world[frame] = read(env)
        # Keep only frames a later window can still reach (and frame 0, which early windows repeat).
        oldest = frame - (m - 1) * s - replan_every
        for f in [f for f in world if 0 < f < oldest]:
            del world[f]
    result = {"success": bool(success), "steps": int(info["t"]), "frames": frame,
              "failure": None if success else "timeout", "seconds": round(time.time() - t0, 2)}
    if video is not None:
        result["video_frames"] = video
    return result
