"""The toolchain record: the installed simulator stack is the one pyproject.toml pins, a difference between two
records is named by package and version, and numpy's dispatch is capped at x86-64-v3 in the package's processes."""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from world_modality.toolchain import NUMPY_SIMD_CAP, PACKAGES, SIMD_CAP_ENV, differences, toolchain

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


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in SIMD_CAP_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return proc.stdout.strip()


def test_the_package_caps_numpys_and_torchs_vector_code_in_its_process_and_the_processes_it_starts():
    """AVX-512 loops round otherwise than AVX2 ones, and generated demonstrations and a pretrained encoder differed by
    them: a process that imports the package before numpy and torch, and a process it starts, use nothing above
    x86-64-v3."""
    child = "import numpy; from world_modality.toolchain import numpy_simd; print(numpy_simd())"
    out = _run(
        "import world_modality, subprocess, sys\n"
        "from world_modality.toolchain import numpy_simd, toolchain\n"
        "assert toolchain()['numpy_simd'] == numpy_simd()\n"
        "import torch\n"
        "assert toolchain()['torch_simd'] in ('DEFAULT', 'AVX2'), toolchain()\n"
        f"print(numpy_simd()); print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True,"
        " text=True, check=True).stdout.strip())"
    )
    here, started = out.splitlines()
    assert here not in NUMPY_SIMD_CAP and started not in NUMPY_SIMD_CAP, out
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert here.startswith("X86_V") and started == here


def test_a_users_own_setting_is_kept():
    code = "import os, world_modality; print(repr(os.environ['NPY_DISABLE_CPU_FEATURES']), os.environ['MKL_CBWR'])"
    assert _run(code, NPY_DISABLE_CPU_FEATURES="", MKL_CBWR="COMPATIBLE") == "'' COMPATIBLE"
