"""One closed-loop episode: reset to a fixed initial state, step the policy through `reset`/`select_action`,
render only the frames the policy or the world encoder will look at."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def run_episode(
    env, runner, init_index: int, replan_every: int, seed: int = 0, record_video: bool = False
) -> dict[str, Any]:
    """-> {success, steps, frames, failure, seconds, timing, video_frames?}. `env` is a `sim.LiberoEnv`, `runner` a
    `inference.EpisodeRunner` (a `PolicyRunner`, a `RemoteRunner`, or anything with their `reset`, `select_action`,
    `needs_observation`, `needs_world_frame`, `world_input`, `image_keys` and `control_steps_per_frame`).

    `timing` splits the episode's seconds: `physics_s` (reset and control steps), `rendering_s` (camera frames,
    or the object state an `env_state` policy reads in their place) and `policy_s` (the runner's reset and
    actions); the rest of `seconds` is the loop itself and video frames."""
    t0 = time.time()
    clock = time.perf_counter
    physics = rendering = policy = 0.0
    c = clock()
    runner.reset(seed, instructions=(env.task, getattr(env, "base_instruction", env.task)), replan_every=replan_every)
    policy += clock() - c
    c = clock()
    env.reset(init_index, render=False)
    physics += clock() - c
    c = clock()
    obs = env.observe()  # what reset(render=True) returns, timed apart from the settle steps
    rendering += clock() - c
    video = [] if record_video else None
    frame, success, info = 0, False, {"t": 0}
    while True:
        c = clock()
        # A world frame: the world camera (from `obs` when rendered), or the object state for an `env_state` policy.
        world = runner.world_input(env, obs) if runner.needs_world_frame else None
        rendering += clock() - c
        c = clock()
        action = runner.select_action(obs, world)
        policy += clock() - c
        if video is not None and obs is not None:  # a new chunk's observation
            video.append(np.concatenate([obs[k] for k in runner.image_keys], axis=1))
        c = clock()
        for _ in range(runner.control_steps_per_frame):
            _, done, success, info = env.step(action)
            if done:
                break
        physics += clock() - c
        frame += 1
        if done:
            break
        c = clock()
        obs = env.observe() if runner.needs_observation else None
        rendering += clock() - c
    result = {
        "success": bool(success),
        "steps": int(info["t"]),
        "frames": frame,
        "failure": None if success else "timeout",
        "seconds": round(time.time() - t0, 2),
        "timing": {"physics_s": round(physics, 4), "rendering_s": round(rendering, 4), "policy_s": round(policy, 4)},
    }
    if video is not None:
        result["video_frames"] = video
    return result
