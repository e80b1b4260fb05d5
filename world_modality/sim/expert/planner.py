"""Goal -> skill: the task's BDDL goal parsed into what the expert must move where."""

from __future__ import annotations

from dataclasses import dataclass

from world_modality.sim.env import LiberoEnv


@dataclass
class Plan:
    """What to move where, parsed from the task's BDDL goal."""

    obj: str  # body to pick
    target: str  # object or site to place it on / in
    relation: str  # 'on' or 'in'


def parse_plan(env: LiberoEnv) -> Plan:
    """Pick-and-place plan from the single goal predicate (On/In obj target); else unsupported."""
    goal = env.sim_env.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("on", "in"):
        raise NotImplementedError(f"Scripted expert handles one On/In goal, got {goal} ({env.task_name}).")
    rel, obj, target = goal[0]
    return Plan(obj=obj, target=target, relation=rel.lower())
