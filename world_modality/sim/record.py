"""One expert demonstration in LIBERO, recorded at the dataset frame rate with its phase per frame.

The simulator runs at 20 Hz; the dataset is written at 10 fps (the public LIBERO sets' rate), so each
recorded action is held for `control_steps_per_frame` = 2 control steps. Evaluation replays policy
actions the same way, so the recorded action is exactly what the arm executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.env_state import ENV_STATE_KEY
from .env import IMAGE_KEY, STATE_KEY, WRIST_KEY, LiberoEnv
from .suites import CONTROL_FREQ

DATASET_FPS = 10
CONTROL_STEPS_PER_FRAME = CONTROL_FREQ // DATASET_FPS


@dataclass
class Demo:
    task: str
    task_id: int
    init_index: int
    success: bool
    steps: int  # control steps
    images: dict[str, list[np.ndarray]] = field(default_factory=lambda: {IMAGE_KEY: [], WRIST_KEY: []})
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    scene: dict = field(default_factory=dict)  # privileged facts for annotations (names, positions)
    start_state: np.ndarray | None = None  # flattened simulator state the episode started from
    # Privileged object state per saved frame (`observation.environment_state`) and its entries' names.
    env_states: list[np.ndarray] = field(default_factory=list)
    env_state_names: list[str] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            IMAGE_KEY: np.stack(self.images[IMAGE_KEY]),
            WRIST_KEY: np.stack(self.images[WRIST_KEY]),
            STATE_KEY: np.stack(self.states).astype(np.float32),
            "action": np.stack(self.actions).astype(np.float32),
        }
        if self.env_states:
            out[ENV_STATE_KEY] = np.stack(self.env_states).astype(np.float32)
        return out


def record_demo(env: LiberoEnv, init_index: int, seed: int = 0, noise: float = 0.0,
                control_steps_per_frame: int = CONTROL_STEPS_PER_FRAME, placement_seed: int | None = None) -> Demo:
    """Roll out the expert once, rendering only the frames that are saved. The start is a fresh placement
    when `placement_seed` is given (generation), else the benchmark's stored initial state `init_index`;
    `init_index` also seeds the expert's noise."""
    from .expert import PickPlaceExpert

    obs = env.reset(init_index, render=True, placement_seed=placement_seed)
    expert = PickPlaceExpert(env, noise=noise, rng=np.random.default_rng([seed, env.task_id, init_index]))
    demo = Demo(task=env.task, task_id=env.task_id, init_index=init_index, success=False, steps=0,
                scene=scene_facts(env, expert), start_state=env.start_state.copy(),
                env_state_names=env.environment_state_names())
    done = success = False
    while not done:
        phase = expert.phase  # the phase that produces this action (act() may move to the next one)
        action = expert.act()
        demo.images[IMAGE_KEY].append(obs[IMAGE_KEY])
        demo.images[WRIST_KEY].append(obs[WRIST_KEY])
        demo.states.append(obs[STATE_KEY])
        demo.env_states.append(env.environment_state())  # the simulator state `obs` was observed in
        demo.actions.append(action.astype(np.float32))
        demo.phases.append(phase)
        for _ in range(control_steps_per_frame):
            _, done, success, info = env.step(action)
            if done:
                break
        if not done:
            obs = env.observe()
    demo.success, demo.steps = success, info["t"]
    return demo


def scene_facts(env: LiberoEnv, expert) -> dict:
    """Names and start positions of the object to move and its target, for annotations."""
    plan = expert.plan
    states = env.sim_env.object_states_dict
    pos = {n: np.asarray(states[n].get_geom_state()["pos"], dtype=float).round(3).tolist() for n in (plan.obj, plan.target)}
    return {"object": plan.obj, "target": plan.target, "relation": plan.relation, "positions": pos}
