"""The task expert: the plan of a task's goal run one skill after another, each taking over where the last ended.

Its phase names the step, the skill and the skill's own phase ("1:place:carry"), so every recorded frame says
which step of the plan produced it; "done" once the last step is.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import numpy as np

from .planner import StartFacts, Step, plan_steps, start_facts

# Which class runs a step: skill (or, for open/close, "drawer" / "door") -> (module of this package, class).
SKILL_CLASSES = {
    "place": ("pick_place", "PickPlaceExpert"),
    "push": ("push", "PushSkill"),
    "drawer": ("drawer", "DrawerSkill"),
    "door": ("door", "DoorSkill"),
    "turn_on": ("knob", "KnobSkill"),
    "turn_off": ("knob", "KnobSkill"),
}
DONE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1.0])  # hold still, gripper open


class Phase(NamedTuple):
    """A TaskExpert phase split: `index` and `skill` are None / "" for "done" and for a bare skill phase
    (phases recorded before plans had several steps: that of the one place step)."""

    index: int | None
    skill: str
    name: str


def split_phase(phase: str) -> Phase:
    """'1:place:carry' -> Phase(1, 'place', 'carry'); 'done' -> Phase(None, '', 'done')."""
    parts = str(phase).split(":", 2)
    if len(parts) == 1:
        return Phase(None, "", parts[0])
    if len(parts) != 3 or not parts[0].isdigit():
        raise ValueError(f"phase {phase!r} is not '<step index>:<skill>:<skill phase>' or a bare phase name.")
    return Phase(int(parts[0]), parts[1], parts[2])


def skill_kind(step: Step, facts: StartFacts) -> str:
    """The SKILL_CLASSES key of a step: open/close of a hinged door is the door skill's, of a drawer the drawer's."""
    if step.skill in ("open", "close"):
        return "door" if step.obj in facts.hinged else "drawer"
    return step.skill


def skill_class(kind: str):
    """The skill class of a SKILL_CLASSES key, imported on first use; a module not written yet is named."""
    module, name = SKILL_CLASSES[kind]
    full = f"{__package__}.{module}"
    try:
        return getattr(importlib.import_module(full), name)
    except ModuleNotFoundError as e:
        if e.name != full:
            raise
        raise NotImplementedError(f"the {kind} skill ({full}.{name}) is not implemented.") from None
    except AttributeError:
        raise NotImplementedError(f"the {kind} skill: {full} has no class {name}.") from None


class TaskExpert:
    """Runs the plan of `env`'s goal: one skill per step, the next built as soon as the current one is done (so a
    frame's phase names the skill that acted in it). `plan` is the list of steps, `step` the current one (the
    last once all are done), `start_positions[i]` where step i's object and target stood when it began."""

    def __init__(
        self, env, noise: float = 0.0, rng=None, plan: list[Step] | None = None, facts: StartFacts | None = None
    ):
        """`plan` and `facts` default to those of `env`'s goal and current (start) state."""
        self.env, self.noise = env, noise
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.facts = start_facts(env) if facts is None else facts
        if plan is None:
            plan = plan_steps(env.sim_env.parsed_problem["goal_state"], self.facts)
        self.plan = list(plan)
        if not self.plan:
            raise ValueError("TaskExpert needs a plan of at least one step, got an empty one.")
        self._classes = [skill_class(skill_kind(s, self.facts)) for s in self.plan]  # a missing skill fails here
        self.start_positions: list[dict[str, list[float]]] = []
        self.index = 0
        self.skill = self._begin(0)

    @property
    def step(self) -> Step:
        return self.plan[min(self.index, len(self.plan) - 1)]

    @property
    def done(self) -> bool:
        return self.index >= len(self.plan)

    @property
    def phase(self) -> str:
        return "done" if self.done else f"{self.index}:{self.step.skill}:{self.skill.phase}"

    def _begin(self, i: int):
        step = self.plan[i]
        self.start_positions.append({n: self.position(n) for n in (step.obj, step.target) if n})
        return self._classes[i](self.env, step=step, noise=self.noise, rng=self.rng)

    def position(self, name: str) -> list[float]:
        """World position of an object, region or fixture (privileged)."""
        pos = self.env.sim_env.object_states_dict[name].get_geom_state()["pos"]
        return np.asarray(pos, dtype=float).round(3).tolist()

    def act(self) -> np.ndarray:
        """Next 7-D action: the current skill's; past the last step, hold still with the gripper open."""
        if self.done:
            return DONE_ACTION.copy()
        action = self.skill.act()
        if self.skill.phase == "done":
            self.index += 1
            self.skill = self._begin(self.index) if not self.done else None
        return action
