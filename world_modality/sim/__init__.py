"""LIBERO simulator: env wrapper in the dataset schema, suites and step limits, scripted expert (TaskExpert runs a
task's plan of skills)."""

from world_modality.sim.suites import (
    NOOP_ACTION,
    PRO_SUITES,
    SETTLE_STEPS,
    STANDARD_SUITES,
    STEP_LIMITS,
    list_suites,
    step_limit,
)

__all__ = [
    "LiberoEnv",
    "PickPlaceExpert",
    "TaskExpert",
    "expert_episode",
    "record_demonstration",
    "NOOP_ACTION",
    "PRO_SUITES",
    "SETTLE_STEPS",
    "STANDARD_SUITES",
    "STEP_LIMITS",
    "list_suites",
    "step_limit",
]


def __getattr__(name):
    # Lazy: importing the simulator fixes MUJOCO_GL for the process, so only do it when asked.
    if name == "LiberoEnv":
        from world_modality.sim.env import LiberoEnv

        return LiberoEnv
    if name in ("PickPlaceExpert", "TaskExpert"):
        from world_modality.sim import expert

        return getattr(expert, name)
    if name in ("expert_episode", "record_demonstration"):
        from world_modality.sim import record

        return getattr(record, name)
    raise AttributeError(name)
