"""The knob skill on a fresh placement: it turns libero_goal's stove on (task 7's whole goal) and ends with the
gripper open above the knob, pointing down as it started."""

from __future__ import annotations

import numpy as np
import pytest

from world_modality.sim.env import LiberoEnv
from world_modality.sim.expert.knob import KnobSkill
from world_modality.sim.expert.planner import Step
from world_modality.sim.record import CONTROL_STEPS_PER_FRAME, run_expert


@pytest.mark.sim
@pytest.mark.slow
def test_turn_on_the_stove_solves_libero_goal_task_7():
    with LiberoEnv("libero_goal", 7) as env:
        env.reset(0, render=False, placement_seed=1000)
        assert env.sim_env.parsed_problem["goal_state"] == [["turnon", "flat_stove_1"]]
        skill = KnobSkill(env, Step("turn_on", "flat_stove_1"))
        assert skill._q() < 0.5  # off at the start
        start_down = env.raw_obs["robot0_eef_quat"].copy()
        success, _, frames = run_expert(env, skill)
        assert success, f"the stove is not on (phase {skill.phase}, knob qpos {skill._q():.3f})"
        assert frames < 120 and skill._q() >= 0.5
        # The episode ends once the goal holds; step on past it to see where the skill leaves the arm for a next
        # one: the fingers open, the hand above the knob, pointing down as it started, the stove still on.
        for _ in range(80):
            if skill.phase == "done":
                break
            action = skill.act()
            for _ in range(CONTROL_STEPS_PER_FRAME):
                env.done = False
                env.step(action)
        assert skill.phase == "done"
        assert skill._q() >= 0.5
        assert env.raw_obs["robot0_gripper_qpos"][0] > 0.03
        assert env.raw_obs["robot0_eef_pos"][2] > skill._fin_top() + 0.03
        assert abs(np.dot(env.raw_obs["robot0_eef_quat"], start_down)) > 0.98
