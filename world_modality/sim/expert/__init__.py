"""Scripted privileged-state expert for LIBERO (reads object poses from the sim).

The expert is queried once per saved dataset frame and each action is held for 2 control steps
(10 fps data, 20 Hz sim; see `record.run_expert`), so every phase counter and timeout counts frames.
Travel heights come from the scene (start pose and the objects and fixtures under the path), so
table scenes (libero_spatial/goal) and the floor scene (libero_object) use the same code.
`planner` turns the task's goal into a skill; `pick_place` is the on/in skill, built on `poses`
(privileged reads), `grasp` (grasp geometry) and `motion` (servo, travel heights).
"""

from .pick_place import PickPlaceExpert
from .planner import Plan, parse_plan

__all__ = ["Plan", "PickPlaceExpert", "parse_plan"]
