"""Shared by the benchmarks: a cheap trained checkpoint, timing helpers, results output, and the rule that a figure
is measured or else named as derived with its formula beside it."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # scripts run as `python bench/x.py` from a clone without an install
    sys.path.insert(0, str(ROOT))


# A figure computed from others under an assumption that was not measured (a projection to more epochs, a steady
# state assuming perfect scaling...) carries "derived" in its name, its formula in figures["derived"] (an expression
# over the other top-level figures) and the assumption in figures["derived_assumptions"].
DERIVED_NAME = re.compile(r"derived|project(ed|ion)|steady|extrapolat|estimate", re.IGNORECASE)
META_KEYS = ("derived", "derived_assumptions", "relabelled")


def _keys(d: dict, prefix: str = ""):
    for k, v in d.items():
        if not prefix and k in META_KEYS:
            continue
        yield prefix + k
        if isinstance(v, dict):
            yield from _keys(v, prefix + k + ".")


def undeclared_derived(figures: dict) -> list[str]:
    """Problems with a results dict: figures whose name says derived/projected/steady-state/estimated without a
    formula in figures["derived"], and "derived" or "derived_assumptions" entries that name no figure."""
    formulas = figures.get("derived") or {}
    keys = set(_keys(figures))
    problems = [
        f"{k}: no formula in 'derived'"
        for k in sorted(keys)
        if DERIVED_NAME.search(k.rsplit(".", 1)[-1]) and not str(formulas.get(k) or "").strip()
    ]
    for meta in ("derived", "derived_assumptions"):
        problems += [f"{meta}[{k!r}] names no figure" for k in figures.get(meta) or {} if k not in keys]
    return problems


def median(xs) -> float:
    return float(statistics.median(xs))


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def host() -> dict:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def commit() -> str:
    """The commit the figures come from ('-dirty' when the package or the benchmarks had uncommitted changes)."""
    from world_modality.provenance import code_commit

    return code_commit(("world_modality", "bench"))


def command() -> str:
    """The command line that ran this benchmark, as it can be typed again from the checkout."""
    script = Path(sys.argv[0])
    if script.is_absolute() and script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def fixture_dataset(root: Path, n_episodes: int = 8, length: int = 24, image_size: int = 128) -> Path:
    """The synthetic fixture: LIBERO's keys and shapes (two cameras, 8-D state, 7-D action)."""
    from world_modality.data.fixture import make_fixture_dataset

    return make_fixture_dataset(root, n_episodes=n_episodes, length=length, image_size=image_size, n_tasks=2, seed=0)


def tiny_config(dataset: Path, out: Path, preset: str = "E2", **overrides):
    """The embedded default (128-px policy images, tiny VJEPA2 + tiny Qwen2.5-VL) on `dataset`."""
    from world_modality.config import build_config

    base = {
        "dataset": str(dataset),
        "output_dir": str(out),
        "max_epochs": 1,
        "batch_size": 8,
        "tensorboard": False,
        "num_threads": 1,
    }
    base.update(overrides)
    return build_config(base, preset=preset)


def tiny_checkpoint(workdir: Path, preset: str = "E2", image_size: int = 128, control_steps_per_frame: int = 2) -> Path:
    """Train one epoch on a small fixture: weights only have to exist, not to be good. The dataset
    is labelled with the generated demos' timing (each action held 2 control steps), so the policy
    drives the simulator on the embedded default's schedule."""
    from world_modality.train import train

    data = fixture_dataset(workdir / "fixture", n_episodes=4, length=16, image_size=image_size)
    info_path = data / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "control_steps_per_frame": control_steps_per_frame}, indent=2))
    return train(tiny_config(data, workdir / preset, preset, image_size=image_size), progress=False)


def emit(name: str, table: list[str], figures: dict, details: dict | None = None, out: str | None = None) -> Path:
    """Print the table, write figures + details, and end stdout with one JSON line (the figures). Every results
    file names the commit its figures came from and the command that measured them."""
    problems = undeclared_derived({**figures, **(details or {})})
    if problems:  # a derived figure must not pass for a measured one
        raise ValueError(f"{name}: {'; '.join(problems)}")
    print("\n".join(table), flush=True)
    figures = {
        "benchmark": name,
        **figures,
        "commit": commit(),
        "command": command(),
        **host(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**figures, **(details or {})}, indent=1) + "\n")
    print(json.dumps(figures), flush=True)
    return path
