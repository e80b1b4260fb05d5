"""The expert's one episode loop (`run_expert`), and one demonstration recorded with it at the dataset frame
rate with its phase per frame.

The simulator runs at 20 Hz; the dataset is written at 10 fps (the public LIBERO sets' rate), so each
recorded action is held for `control_steps_per_frame` = 2 control steps. Evaluation replays policy
actions the same way, so the recorded action is exactly what the arm executed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.env_state import ENV_STATE_KEY
from .env import IMAGE_KEY, STATE_KEY, WRIST_KEY, LiberoEnv
from .suites import CONTROL_FREQ

DATASET_FPS = 10
CONTROL_STEPS_PER_FRAME = CONTROL_FREQ // DATASET_FPS
# Frames an expert that says it is done (TaskExpert after its last step) is still stepped, so what it let go of can
# settle into the goal; after them the episode ends unsolved instead of idling to the step limit.
DONE_GRACE_FRAMES = 10


@dataclass
class Demonstration:
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


def run_expert(
    env: LiberoEnv,
    expert,
    obs=None,
    control_steps_per_frame: int = CONTROL_STEPS_PER_FRAME,
    on_frame: Callable[..., None] | None = None,
    render: bool = False,
) -> tuple[bool, int, int]:
    """The one expert stepping loop: the expert decides once per saved frame and each action is held for
    `control_steps_per_frame` control steps, until the episode ends. `on_frame(obs, phase, action)` sees each
    frame before it is executed; `phase` is the phase that produced the action (act() may move on). With a
    rendered `obs` (the reset's observation) each next frame is rendered after its steps, else `obs` stays
    None and nothing is rendered. An expert whose `done` attribute turns true gets DONE_GRACE_FRAMES more frames.
    Returns (success, control steps, frames)."""
    done = success = False
    frames, info, idle = 0, {"t": 0}, 0
    while not done:
        if getattr(expert, "done", False):
            if idle == DONE_GRACE_FRAMES:
                break
            idle += 1
        phase = expert.phase
        action = expert.act()
        if on_frame is not None:
            on_frame(obs, phase, action)
        frames += 1
        for _ in range(control_steps_per_frame):
            _, done, success, info = env.step(action, render=render)
            if done:
                break
        if not done and obs is not None:
            obs = env.observe()
    return success, info["t"], frames


def expert_episode(
    env: LiberoEnv,
    init_state_index: int,
    render: bool = False,
    control_steps_per_frame: int = CONTROL_STEPS_PER_FRAME,
    trace: list | None = None,
    placement_seed: int | None = None,
    **expert_kw,
) -> dict:
    """Roll the task expert out once without recording frames (success benchmarks), from the stored initial
    state `init_state_index`, or from a fresh placement when `placement_seed` is given.

    Returns success, control steps, frames, the phase at the end ('<step>:<skill>:<skill phase>' or 'done'),
    the plan step it ended in (`plan_step`, its index; len(plan) once all are done) and the plan. If `trace` is
    a list, one dict per frame (phase, eef, position of the current step's object, action) is appended to it.
    """
    from .expert import TaskExpert

    env.reset(init_state_index, render=False, placement_seed=placement_seed)
    expert = TaskExpert(env, **expert_kw)
    frame = iter(range(1 << 62))

    def on_frame(_obs, phase, action):
        i = next(frame)
        if trace is not None:
            trace.append(
                {
                    "frame": i,
                    "phase": phase,
                    "eef": np.array(env.raw_obs["robot0_eef_pos"]),
                    "obj": np.array(expert.position(expert.step.obj)),
                    "action": action.copy(),
                }
            )

    success, steps, frames = run_expert(
        env, expert, control_steps_per_frame=control_steps_per_frame, on_frame=on_frame, render=render
    )
    return {
        "success": success,
        "steps": steps,
        "frames": frames,
        "phase": expert.phase,
        "plan_step": expert.index,
        "plan": [step_words(s) for s in expert.plan],
    }


def step_words(step) -> str:
    """'place akita_black_bowl_1 in wooden_cabinet_1_top_region', 'open wooden_cabinet_1_top_region'."""
    return " ".join(w for w in (step.skill, step.obj, step.relation, step.target) if w)


def record_demonstration(
    env: LiberoEnv,
    init_index: int,
    seed: int = 0,
    noise: float = 0.0,
    control_steps_per_frame: int = CONTROL_STEPS_PER_FRAME,
    placement_seed: int | None = None,
) -> Demonstration:
    """Roll out the task expert once, rendering only the frames that are saved. The start is a fresh placement
    when `placement_seed` is given (generation), else the benchmark's stored initial state `init_index`;
    `init_index` also seeds the expert's noise. Each frame's phase names its plan step and skill phase."""
    from .expert import TaskExpert

    obs = env.reset(init_index, render=True, placement_seed=placement_seed)
    expert = TaskExpert(env, noise=noise, rng=np.random.default_rng([seed, env.task_id, init_index]))
    recorded = Demonstration(
        task=env.task,
        task_id=env.task_id,
        init_index=init_index,
        success=False,
        steps=0,
        start_state=env.start_state.copy(),
        env_state_names=env.environment_state_names(),
    )

    def on_frame(frame_obs, phase, action):
        recorded.images[IMAGE_KEY].append(frame_obs[IMAGE_KEY])
        recorded.images[WRIST_KEY].append(frame_obs[WRIST_KEY])
        recorded.states.append(frame_obs[STATE_KEY])
        recorded.env_states.append(env.environment_state())  # the simulator state `frame_obs` was observed in
        recorded.actions.append(action.astype(np.float32))
        recorded.phases.append(phase)

    recorded.success, recorded.steps, _ = run_expert(env, expert, obs, control_steps_per_frame, on_frame)
    recorded.scene = scene_facts(env, expert)  # after the run: each step's positions are those it began with
    return recorded


def scene_facts(env: LiberoEnv, expert) -> dict:
    """The plan's steps with where each step's object and target stood when it began (now, for a step never
    begun), for annotations. A one-step place plan also keeps the object, target, relation and positions keys
    of single-goal recordings."""
    steps = []
    for i, step in enumerate(expert.plan):
        began = expert.start_positions[i] if i < len(expert.start_positions) else {}
        names = [n for n in (step.obj, step.target) if n]
        positions = {n: began[n] if n in began else expert.position(n) for n in names}
        steps.append({**asdict(step), "positions": positions})
    scene = {"steps": steps}
    if len(steps) == 1 and steps[0]["skill"] == "place":
        only = steps[0]
        scene = {
            "object": only["obj"],
            "target": only["target"],
            "relation": only["relation"],
            "positions": only["positions"],
            **scene,
        }
    return scene
