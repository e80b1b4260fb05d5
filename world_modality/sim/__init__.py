"""LIBERO simulator: env wrapper in the dataset schema, suites and step limits, scripted expert."""
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
    "run_episode",
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
    if name in ("PickPlaceExpert", "run_episode"):
        from world_modality.sim import expert

        return getattr(expert, name)
    raise AttributeError(name)
