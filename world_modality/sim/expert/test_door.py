"""The door skill on a fresh placement: it pushes libero_10 task 9's open microwave door shut and ends with the
gripper open, lifted above the door; opening a door is refused as not written."""

from __future__ import annotations

import pytest

from world_modality.sim.env import LiberoEnv
from world_modality.sim.expert.door import DoorSkill
from world_modality.sim.expert.planner import Step
from world_modality.sim.record import CONTROL_STEPS_PER_FRAME

MAX_FRAMES = 150


@pytest.mark.sim
@pytest.mark.slow
def test_close_the_microwave_door_of_libero_10_task_9():
    with LiberoEnv("libero_10", 9) as env:
        env.reset(0, render=False, placement_seed=1000)
        door = env.sim_env.object_states_dict["microwave_1"]
        assert door.is_open()  # the task starts with the door open
        with pytest.raises(NotImplementedError, match="opening a hinged door"):
            DoorSkill(env, Step("open", "microwave_1"))
        skill = DoorSkill(env, Step("close", "microwave_1"))
        for _ in range(MAX_FRAMES):
            if skill.phase == "done":
                break
            action = skill.act()
            for _ in range(CONTROL_STEPS_PER_FRAME):
                env.step(action)
        assert skill.phase == "done", f"the door skill did not finish in {MAX_FRAMES} frames"
        assert door.is_close(), f"the microwave door is not closed (hinge qpos {skill._q():.4f})"
        assert env.raw_obs["robot0_gripper_qpos"][0] > 0.03  # the fingers stand open for the next skill
        assert env.raw_obs["robot0_eef_pos"][2] > skill._door_top() + 0.05
