"""Observation conversions that make sim output match the public LIBERO datasets."""

from __future__ import annotations

import math

import numpy as np


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle, the robosuite formula the public data was built with."""
    # Deliberately no sign canonicalisation (w < 0 gives angles > pi): openpi and LeRobot use this exact
    # formula, so the state statistics of generated and public data agree.
    q = np.asarray(quat, dtype=np.float64)
    w = min(max(float(q[3]), -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


def state8(eef_pos: np.ndarray, eef_quat: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """The dataset's 8-D `observation.state`: eef xyz, eef axis-angle, 2 finger joint positions."""
    return np.concatenate([eef_pos, quat2axisangle(eef_quat), gripper_qpos]).astype(np.float32)


def flip_image(raw: np.ndarray) -> np.ndarray:
    """Rotate a raw OpenGL frame by 180 degrees, as openpi / OpenVLA / LeRobot do for LIBERO."""
    # MuJoCo reads pixels bottom-up; the public pipelines rotate (not just vertically flip) the frame.
    return np.ascontiguousarray(raw[::-1, ::-1])
