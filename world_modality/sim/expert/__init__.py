"""Scripted privileged-state expert for LIBERO (reads object poses from the sim).

The expert is queried once per saved dataset frame and each action is held for 2 control steps
(10 fps data, 20 Hz sim; see `record.run_expert`), so every phase counter and timeout counts frames.
Travel heights come from the scene (start pose and the objects and fixtures under the path), so
table scenes (libero_spatial/goal) and the floor scene (libero_object) use the same code.
`planner` turns the task's goal into ordered steps and `task.TaskExpert` runs them, one skill each:
`pick_place` (on/in, built on `poses` privileged reads, `grasp` geometry and `motion` servo and travel
heights), `push`, `drawer`, `door` and `knob`, each imported when a plan first needs it.
"""

from .pick_place import PickPlaceExpert
from .planner import Plan, StartFacts, Step, parse_plan, plan_steps, start_facts
from .task import TaskExpert, split_phase

__all__ = [
    "Plan",
    "PickPlaceExpert",
    "StartFacts",
    "Step",
    "TaskExpert",
    "parse_plan",
    "plan_steps",
    "split_phase",
    "start_facts",
]
