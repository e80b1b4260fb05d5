"""Motion: the Cartesian servo on OSC's delta actions, phase bookkeeping and the scene-derived travel heights."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

POS_GAIN = 25.0  # action units per metre; OSC maps 1.0 to a 5 cm goal offset, so >20 overshoots the
# goal slightly, which cancels OSC's steady-state lag (at 12 the eef stalled ~1 cm short)
ROT_GAIN = 2.0  # action units per radian; OSC maps 1.0 to 0.5 rad
APPROACH_CLEARANCE = 0.07  # eef above the highest object/fixture between the eef and the object
CARRY_CLEARANCE = 0.04  # held object's bottom above the highest object/fixture on the way to the target


class Motion:
    """Waypoint servoing for the expert (needs its poses, grasp point, target and phase state)."""

    def _servo(self, goal: np.ndarray, grip: float, max_speed: float = 1.0) -> tuple[np.ndarray, float]:
        eef, rot = self._eef()
        err = goal - eef
        a = np.zeros(7)
        a[:3] = np.clip(POS_GAIN * err, -max_speed, max_speed)
        # Hold the initial (pointing-down) orientation; small drift otherwise tilts the grasp.
        rot_err = Rotation.from_matrix(self.target_ori @ rot.T).as_rotvec()
        a[3:6] = np.clip(ROT_GAIN * rot_err, -1, 1)
        if self.noise:
            a[:3] += self.rng.normal(0, self.noise, 3)
        a[6] = grip
        return a, float(np.linalg.norm(err))

    def _moved_since_plan(self) -> bool:
        if self._plan_pose is None:
            return False
        (p0, r0), (p1, r1) = self._plan_pose, self._obj_pose()
        angle = np.arccos(np.clip((np.trace(r0.T @ r1) - 1) / 2, -1.0, 1.0))
        return bool(np.linalg.norm(p1 - p0) > 0.01 or angle > np.deg2rad(5))

    def _rot_err(self) -> float:
        _, rot = self._eef()
        return float(np.linalg.norm(Rotation.from_matrix(self.target_ori @ rot.T).as_rotvec()))

    def _stalled(self, frames: int = 4, tol: float = 0.002) -> bool:
        """The eef moved less than `tol` over the last `frames` decisions of this phase."""
        h = self._eef_hist
        return len(h) > frames and float(np.linalg.norm(h[-1] - h[-1 - frames])) < tol

    def _next(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0
        self._eef_hist = []

    def _safe_z(self) -> float:
        """Eef travel height for the empty gripper, derived from the scene (table or floor).

        Never below the start height (minus 3 cm, the robot's ready pose sits above every scene's
        work surface) and at least APPROACH_CLEARANCE above everything between the eef and the
        object. Fixed at the start.
        """
        if self._travel_z is None:
            eef, _ = self._eef()
            g = self._grasp_point()
            top = self._corridor_top(eef, g)
            self._start_z = eef[2]
            self._travel_z = max(eef[2] - 0.03, top + APPROACH_CLEARANCE)
        return self._travel_z

    def _carry_z(self) -> float:
        """Eef travel height while holding the object: its bottom clears everything on the way."""
        if self._carry_travel_z is None:  # fixed once, right after the grasp
            eef, _ = self._eef()
            lo, _ = self._obj_extent(self.plan.obj)
            top = self._corridor_top(eef, self._target_xy(), exclude=(self.plan.obj,))
            self._carry_travel_z = max(self._safe_z(), top + (eef[2] - lo[2]) + CARRY_CLEARANCE)
        return self._carry_travel_z
