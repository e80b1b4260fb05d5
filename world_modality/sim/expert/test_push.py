"""The push skill on libero_goal task 5 (push the plate to the front of the stove), from a fresh placement."""

import numpy as np
import pytest

from world_modality.sim.expert.planner import Step
from world_modality.sim.expert.push import PushSkill


@pytest.mark.sim
@pytest.mark.slow
def test_push_skill_plate_to_front_of_stove():
    from world_modality.sim.env import LiberoEnv
    from world_modality.sim.record import run_expert

    with LiberoEnv("libero_goal", 5) as env:
        env.reset(0, render=False, placement_seed=1001)
        se = env.sim_env
        assert se.parsed_problem["goal_state"] == [["on", "plate_1", "main_table_stove_front_region"]]
        start = np.array(se.sim.data.body_xpos[se.obj_body_id["plate_1"]])
        skill = PushSkill(env, Step("push", "plate_1", target="main_table_stove_front_region", relation="on"))
        success, _, _ = run_expert(env, skill)
        end = np.array(se.sim.data.body_xpos[se.obj_body_id["plate_1"]])
    assert success, f"plate went from {start.round(3)} to {end.round(3)}, phase {skill.phase}"
    assert np.linalg.norm(end[:2] - start[:2]) > 0.15  # it was pushed there, not already in the region
