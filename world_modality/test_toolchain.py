"""The toolchain record: the installed simulator stack is the one pyproject.toml pins, and a difference between
two records is named by package and version."""

import re
from pathlib import Path

from world_modality.toolchain import PACKAGES, differences, toolchain

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    """{distribution: version} of each `"name==version"` requirement in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    return {name.lower(): version for name, version in re.findall(r'^\s*"([A-Za-z0-9_.-]+)==([^"]+)"', text, re.M)}


def test_the_installed_simulator_stack_is_the_pinned_one():
    """Another mujoco (or numpy, scipy, pillow, opencv) generates other bytes from the same settings, so a study's
    dataset rebuilt by hash on this install would be refused: the install must be the pinned one."""
    pins, found = _pins(), toolchain()
    pinned = [p for p in PACKAGES if p in pins]
    assert {"mujoco", "numpy", "scipy", "pillow", "opencv-python", "av", "pyarrow"} <= set(pinned)
    assert {p: found[p] for p in pinned} == {p: pins[p] for p in pinned}


def test_differences_name_each_moved_version_and_a_missing_record():
    now = toolchain()
    assert differences(now, dict(now)) == []
    assert differences({**now, "mujoco": "3.17.0"}, {**now, "mujoco": "3.16.0"}, "a", "b") == [
        "mujoco 3.17.0 (a) vs 3.16.0 (b)"
    ]
    assert differences(now, None, "a", "b") == [
        "no software versions on record for b (written before they were recorded)"
    ]
    assert set(now) >= {"python", "mujoco", "numpy", "torch", "cpu", "machine"} and now["mujoco"] and now["torch"]
