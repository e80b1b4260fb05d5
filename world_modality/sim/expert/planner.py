"""Goal -> skills: the task's BDDL goal parsed into the steps the expert must take, in an order that can work."""

from __future__ import annotations

from dataclasses import dataclass

from world_modality.sim.env import LiberoEnv

# What each skill does to its step's `obj`:
#   place    pick `obj` and set it `relation` ('on' / 'in') `target`
#   push     slide `obj` (too flat to grasp) over the floor/table until it is `relation` `target`
#   open     pull the drawer / hinged door `obj` (a region or articulated object) open
#   close    push the drawer / hinged door `obj` shut
#   turn_on  turn the knob of `obj` (a stove) on
#   turn_off turn the knob of `obj` off
SKILLS = ("place", "push", "open", "close", "turn_on", "turn_off")


@dataclass(frozen=True)
class Step:
    """One skill applied to one object; a task's plan is a list of them."""

    skill: str
    obj: str  # body, region or articulated object the skill acts on
    target: str = ""  # place / push: the object or region `obj` must end on / in
    relation: str = ""  # place / push: 'on' or 'in'

    def __post_init__(self):
        if self.skill not in SKILLS:
            raise ValueError(f"skill must be one of {SKILLS}, got {self.skill!r}.")
        if self.skill in ("place", "push") and (not self.target or self.relation not in ("on", "in")):
            raise ValueError(f"a {self.skill} step needs a target and relation 'on'/'in', got {self}.")


Plan = Step  # the single pick-and-place step the on/in skill is given


def parse_plan(env: LiberoEnv) -> Plan:
    """Pick-and-place plan from the single goal predicate (On/In obj target); else unsupported."""
    goal = env.sim_env.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("on", "in"):
        raise NotImplementedError(f"Scripted expert handles one On/In goal, got {goal} ({env.task_name}).")
    rel, obj, target = goal[0]
    return Step("place", obj=obj, target=target, relation=rel.lower())
