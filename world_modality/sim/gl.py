"""Pick the MuJoCo OpenGL backend (EGL or OSMesa) and quiet robosuite's setup notices, before robosuite is
imported. `check_gl_environment` refuses a MUJOCO_GL the simulator cannot render with before anything starts: left to
robosuite's import, it failed inside each simulator worker, once per episode."""

from __future__ import annotations

import glob
import logging
import os

from ..config import ConfigError

GL_BACKENDS = ("egl", "osmesa")


def check_gl_environment() -> str:
    """The MUJOCO_GL the user set (lower-cased; '' when unset, for the automatic choice), or ConfigError when it
    names no off-screen backend: the simulator renders without a display, with EGL or OSMesa only."""
    raw = os.environ.get("MUJOCO_GL", "")
    current = raw.strip().lower()
    if current and current not in GL_BACKENDS:
        raise ConfigError(
            f"MUJOCO_GL={raw!r} is not a renderer the simulator can use; expected 'egl' or 'osmesa' "
            f"(off-screen rendering), or MUJOCO_GL unset for the automatic choice."
        )
    return current


def has_gpu_render_node() -> bool:
    # EGL only beats OSMesa with a real GPU; on a CPU box both fall back to llvmpipe and
    # measured the same speed, but EGL prints EGLError noise when contexts are freed at exit.
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/dri/renderD*"))


def select_gl(render_mode: str = "auto") -> str:
    """Set MUJOCO_GL / PYOPENGL_PLATFORM once per process and return the backend in use."""
    if render_mode not in ("auto", *GL_BACKENDS):
        raise ValueError(f"render_mode must be 'auto', 'egl' or 'osmesa', got {render_mode!r}.")
    current = check_gl_environment()
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


# robosuite's import-time advice to write a private macro file: the project sets what it needs itself, so the
# user has nothing to act on. Every other robosuite message still prints.
_MACRO_NOTICES = (
    "No private macro file found",
    "It is recommended to use a private macro file",
    "To setup, run: python",
)


def _not_a_macro_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_MACRO_NOTICES)


def quiet_robosuite_macros() -> None:
    """Drop robosuite's macro-file notices (once per process; call before the first robosuite import)."""
    logger = logging.getLogger("robosuite_logs")  # robosuite.utils.log_utils' logger, filled in on import
    if _not_a_macro_notice not in logger.filters:
        logger.addFilter(_not_a_macro_notice)
