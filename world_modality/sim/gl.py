"""Pick the MuJoCo OpenGL backend (EGL or OSMesa) before robosuite is imported."""
from __future__ import annotations

import glob
import os

GL_BACKENDS = ("egl", "osmesa")


def has_gpu_render_node() -> bool:
    # EGL only beats OSMesa with a real GPU; on a CPU box both fall back to llvmpipe and
    # measured the same speed, but EGL prints EGLError noise when contexts are freed at exit.
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/dri/renderD*"))


def select_gl(render_mode: str = "auto") -> str:
    """Set MUJOCO_GL / PYOPENGL_PLATFORM once per process and return the backend in use."""
    if render_mode not in ("auto", *GL_BACKENDS):
        raise ValueError(f"render_mode must be 'auto', 'egl' or 'osmesa', got {render_mode!r}.")
    current = os.environ.get("MUJOCO_GL", "").strip().lower()
    if current:
        # An explicit MUJOCO_GL (the user's override, or an earlier call) wins over 'auto'; a
        # different explicit request cannot be honoured because robosuite binds it at import.
        if render_mode != "auto" and render_mode != current:
            raise ValueError(
                f"render_mode={render_mode!r} conflicts with MUJOCO_GL={current!r}, which is fixed "
                "for the whole process once the simulator is imported; set MUJOCO_GL instead."
            )
        backend = current
    else:
        backend = render_mode if render_mode != "auto" else ("egl" if has_gpu_render_node() else "osmesa")
        os.environ["MUJOCO_GL"] = backend
    # PyOpenGL must agree with MuJoCo's context type or reads back garbage / fails to bind.
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend
