"""The place skill carries a bowl pinched at its rim: libero_spatial task 7's bowl (on the stove) tilts as it
leaves the stove, which must not be taken for a slipped grasp; it ends on the plate, picked once."""

from __future__ import annotations

import pytest

from world_modality.sim.env import LiberoEnv
from world_modality.sim.expert.pick_place import PickPlaceExpert
from world_modality.sim.record import CONTROL_STEPS_PER_FRAME

MAX_FRAMES = 120


@pytest.mark.sim
@pytest.mark.slow
def test_a_bowl_lifted_by_its_rim_is_carried_to_the_plate():
    with LiberoEnv("libero_spatial", 7) as env:
        env.reset(0, render=False)  # stored state 0: before, its tilt read as a slip and the bowl was let go
        expert = PickPlaceExpert(env)
        phases = []
        success = done = False
        for _ in range(MAX_FRAMES):
            if expert.phase == "done" or done:  # the episode ends once the goal holds
                break
            if not phases or phases[-1] != expert.phase:
                phases.append(expert.phase)
            action = expert.act()
            for _ in range(CONTROL_STEPS_PER_FRAME):
                _, done, success, _ = env.step(action)
                if done:
                    break
        assert phases.count("grasp") == 1, f"the bowl was grasped again: phases {phases}"
        assert success, f"the bowl is not on the plate after phases {phases}"
