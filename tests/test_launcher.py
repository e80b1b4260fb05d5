"""The experiments launcher: end to end (three presets over 2 seeds, closed-loop evaluation, one report), and its
checks before anything trains (one line each, the traceback only with WORLD_MODALITY_TRACEBACK=1), with the
project's python found by itself when PY is not given."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "scripts" / "run_fplus_experiments.sh"
MISSING_KEY = "instruction_key 'instruction' was not found"


def new_shell_env(**settings: str) -> dict[str, str]:
    """A new shell's environment: no virtual environment active, no PY, nothing of the project's on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "PYTHONPATH", "PY")}
    venv_bin = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join(
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if p and Path(p) != venv_bin and not (Path(p) / "world-modality").exists()
    )
    env.update(settings)
    return env


def launch(env: dict[str, str], cwd: Path, script: Path = LAUNCHER) -> subprocess.CompletedProcess:
    return subprocess.run([str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("*** ERROR: "), proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.sim
@pytest.mark.slow
def test_launcher_runs_presets_over_two_seeds(fixture_dataset, tmp_path):
    # E0 (no world stream), E4 (its annotations passed on) and E2-Flow (world stream and flow head) reach every
    # branch the launcher has; E2 and E0-Flow add only the cost of four more train-and-evaluate runs.
    from world_modality.data.lerobot import load_dataset

    ds = load_dataset(fixture_dataset)
    coc = tmp_path / "coc.jsonl"
    coc.write_text(
        "".join(
            json.dumps({"episode_index": e.index, "frame_index": f, "text": "move the block"}) + "\n"
            for e in ds.episodes
            for f in range(e.length)
        )
    )
    env = dict(
        os.environ,
        DATASET=str(fixture_dataset),
        SEEDS="0 1",
        EXPERIMENTS="E0 E4 E2-Flow",
        OUT=str(tmp_path / "sweep"),
        COC_JSONL=str(coc),
        TASKS="0",
        N_EPISODES="1",
        WORKERS="1",
        MAX_EPOCHS="1",
        PY=sys.executable,
        TRAIN_ARGS="--image_size 32 --world_image_size 32 --no-tensorboard",
        EVAL_ARGS="--max_steps 8",
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_fplus_experiments.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.name != "report")
    assert runs == sorted(f"{e}-seed{s}" for e in ("E0", "E4", "E2-Flow") for s in (0, 1))
    for run in runs:
        episodes = list((tmp_path / "sweep" / run / "eval").glob("*/episodes.jsonl"))
        assert len(episodes) == 1 and len(episodes[0].read_text().splitlines()) == 1
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "pooled" in report.lower() and "E4" in report


def test_launcher_refuses_a_dataset_without_the_instruction_key(fixture_dataset, tmp_path):
    env = dict(
        os.environ,
        DATASET=str(fixture_dataset),
        INSTRUCTION_KEY="instruction",
        OUT=str(tmp_path / "x"),
        PY=sys.executable,
    )
    proc = launch(env, tmp_path)
    # One line: what was wrong and the keys that do hold instructions; no DatasetError traceback before it.
    assert_one_line_error(proc, "dataset check failed", MISSING_KEY, "['task']")
    assert not (tmp_path / "x").exists()


def test_launcher_shows_the_traceback_only_with_the_traceback_switch(fixture_dataset, tmp_path):
    env = dict(
        os.environ,
        DATASET=str(fixture_dataset),
        INSTRUCTION_KEY="instruction",
        PY=sys.executable,
        WORLD_MODALITY_TRACEBACK="1",
    )
    proc = launch(env, tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and f"DatasetError: {MISSING_KEY}" in proc.stderr, proc.stderr
    assert "*** ERROR: dataset check failed" in proc.stderr


def test_launcher_finds_the_project_python_without_an_active_environment(fixture_dataset, tmp_path):
    """No PY, no activated environment, started from another folder: the .venv next to the script is used."""
    assert (ROOT / ".venv" / "bin" / "python").exists(), "`make setup` creates .venv; run the tests from it"
    # The dataset check passes (it needed the project's packages), then the E4 check stops before any training.
    env = new_shell_env(DATASET=str(fixture_dataset), EXPERIMENTS="E4", COC_JSONL=str(tmp_path / "absent.jsonl"))
    proc = launch(env, tmp_path)
    assert "[launcher] " in proc.stdout and "12 episodes, 2 instructions under 'task'" in proc.stdout, proc.stderr
    assert_one_line_error(proc, "E4 needs chain-of-causation annotations")
    # A wrong key is the dataset's one-line error, not a missing module of a python outside the environment.
    proc = launch(new_shell_env(DATASET=str(fixture_dataset), INSTRUCTION_KEY="instruction"), tmp_path)
    assert_one_line_error(proc, MISSING_KEY)


def test_launcher_looks_for_the_environment_beside_its_own_location(fixture_dataset, tmp_path):
    """The python it picks is <script folder>/../.venv/bin/python (not one found on PATH), else python3."""
    copy = tmp_path / "clone"
    (copy / "scripts").mkdir(parents=True)
    script = Path(shutil.copy2(LAUNCHER, copy / "scripts" / LAUNCHER.name))
    (copy / ".venv" / "bin").mkdir(parents=True)
    marker = tmp_path / "used"
    python = copy / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$0" > {marker}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    proc = launch(new_shell_env(DATASET=str(fixture_dataset), INSTRUCTION_KEY="instruction"), tmp_path, script)
    assert_one_line_error(proc, MISSING_KEY)
    assert marker.read_text().strip() == str(python.resolve())


def test_launcher_names_a_python_that_cannot_run_it(fixture_dataset, tmp_path):
    # A python without the project's packages (a bare virtual environment), started in the repository as a user
    # would be: world_modality imports from the folder, its dependencies do not.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    bare = tmp_path / "bare" / "bin" / "python"
    proc = launch(new_shell_env(DATASET=str(fixture_dataset), PY=str(bare)), ROOT)
    assert_one_line_error(
        proc,
        f"PY={bare}",
        "cannot import the world_modality package (No module named",
        ".venv/bin/python",
        "make setup",
    )
    proc = launch(new_shell_env(DATASET=str(fixture_dataset), PY=str(tmp_path / "no-python")), ROOT)
    assert_one_line_error(proc, "cannot be run", "make setup")
