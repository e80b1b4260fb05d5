"""The drawer skill on fresh placements: it opens libero_goal's middle drawer (task 0's whole goal) and pushes
libero_10 task 3's open bottom drawer shut, ending with the gripper open above the cabinet."""

from __future__ import annotations

import pytest

from world_modality.sim.env import LiberoEnv
from world_modality.sim.expert.drawer import DrawerSkill
from world_modality.sim.expert.planner import Step
from world_modality.sim.record import CONTROL_STEPS_PER_FRAME, run_expert

MAX_FRAMES = 200


def _run_skill(env: LiberoEnv, skill: DrawerSkill) -> int:
    """Step `skill` until it says done; returns the frames it took."""
    for frame in range(MAX_FRAMES):
        if skill.phase == "done":
            return frame
        action = skill.act()
        for _ in range(CONTROL_STEPS_PER_FRAME):
            env.step(action)
    raise AssertionError(f"the drawer skill did not finish in {MAX_FRAMES} frames (phase {skill.phase}).")


@pytest.mark.sim
@pytest.mark.slow
def test_open_middle_drawer_solves_libero_goal_task_0():
    with LiberoEnv("libero_goal", 0) as env:
        env.reset(0, render=False, placement_seed=1000)
        assert env.sim_env.parsed_problem["goal_state"] == [["open", "wooden_cabinet_1_middle_region"]]
        assert not env.sim_env.object_states_dict["wooden_cabinet_1_middle_region"].is_open()
        skill = DrawerSkill(env, Step("open", "wooden_cabinet_1_middle_region"))
        success, _, frames = run_expert(env, skill)
        assert success, f"the middle drawer did not open (phase {skill.phase}, qpos {skill._q():.3f})"
        assert frames < 100


@pytest.mark.sim
@pytest.mark.slow
def test_close_bottom_drawer_of_libero_10_task_3():
    with LiberoEnv("libero_10", 3) as env:
        env.reset(0, render=False, placement_seed=1000)
        region = env.sim_env.object_states_dict["white_cabinet_1_bottom_region"]
        assert region.is_open()  # the task starts with the bottom drawer pulled out
        skill = DrawerSkill(env, Step("close", "white_cabinet_1_bottom_region"))
        _run_skill(env, skill)
        assert region.is_close(), f"the bottom drawer is not closed (qpos {skill._q():.4f})"
        assert env.raw_obs["robot0_gripper_qpos"][0] > 0.03  # let go: the fingers stand open
        assert env.raw_obs["robot0_eef_pos"][2] > skill._cabinet_top() + 0.05  # lifted clear of the cabinet
