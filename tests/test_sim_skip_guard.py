"""The conftest guard: under CI (or WORLD_MODALITY_NO_SIM_SKIP=1) a skipped simulator test fails the run.

Each case runs pytest in a subprocess on a temporary project that uses this repository's conftest.py, and
checks the exit status and each test's outcome."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TESTS = """
import pytest

@pytest.mark.sim
def test_sim_skips_in_its_body():
    pytest.skip("simulator missing")

@pytest.mark.sim
@pytest.mark.skipif(True, reason="simulator missing")
def test_sim_skipped_by_a_marker():
    pass

@pytest.mark.sim
@pytest.mark.xfail(reason="a known failure, not a skip")
def test_sim_expected_to_fail():
    assert False

@pytest.mark.sim
def test_sim_passes():
    pass

def test_plain_skip_is_still_allowed():
    pytest.skip("not a simulator test")
"""

MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_simulator_package_xyz")
pytestmark = pytest.mark.sim

def test_never_collected():
    pass
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("guard")
    shutil.copy(ROOT / "conftest.py", d / "conftest.py")
    (d / "pytest.ini").write_text("[pytest]\nmarkers =\n    sim: needs the simulator\n")
    (d / "test_items.py").write_text(TESTS)
    (d / "test_module_skip.py").write_text(MODULE_SKIP)
    return d


def run(project, files, **env_vars):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "WORLD_MODALITY_NO_SIM_SKIP", "PYTEST_ADDOPTS")}
    env.update(env_vars)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", *files],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    outcomes = dict(re.findall(r"^\S+::(\w+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", proc.stdout, re.M))
    return proc, outcomes


@pytest.mark.parametrize("env_vars", [{}, {"CI": "false"}, {"WORLD_MODALITY_NO_SIM_SKIP": "0"}])
def test_skips_pass_outside_ci(project, env_vars):
    proc, outcomes = run(project, ["test_items.py", "test_module_skip.py"], **env_vars)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert outcomes["test_sim_skips_in_its_body"] == outcomes["test_sim_skipped_by_a_marker"] == "SKIPPED"
    assert "no_such_simulator_package_xyz" in proc.stdout and "4 skipped" in proc.stdout  # the module skip too


@pytest.mark.parametrize("env_vars", [{"CI": "true"}, {"WORLD_MODALITY_NO_SIM_SKIP": "1"}])
def test_a_skipped_sim_test_fails_under_ci(project, env_vars):
    proc, outcomes = run(project, ["test_items.py"], **env_vars)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert outcomes == {
        "test_sim_skips_in_its_body": "FAILED",
        "test_sim_skipped_by_a_marker": "ERROR",  # the skip happens in setup, so pytest calls it an error
        "test_sim_expected_to_fail": "XFAIL",
        "test_sim_passes": "PASSED",
        "test_plain_skip_is_still_allowed": "SKIPPED",
    }, proc.stdout[-3000:]
    assert "simulator tests may not skip under CI" in proc.stdout


def test_a_sim_module_skipped_at_import_fails_under_ci(project):
    proc, _ = run(project, ["test_module_skip.py"], CI="true")
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "simulator test module test_module_skip.py skipped" in proc.stdout
    assert "no_such_simulator_package_xyz" in proc.stdout
