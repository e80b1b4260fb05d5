"""Nudging a bowl out from under an overhang (an open drawer right beside it) so a straight-down rim grasp can
reach it: the closed fingers dip into the bowl and slide it away from the overhang, then the grasp is re-planned."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from .poses import ScenePoses

CLOSE = 1.0
NUDGE_DIST = 0.08  # how far the bowl is slid
NUDGE_INSET = 0.04  # closed finger tips this far from the bowl's centre, on the side it is slid towards
NUDGE_DEPTH = 0.025  # and this far below its rim
NUDGE_SPEED = 0.4
NUDGE_FRAMES = (50, 25, 40, 25)  # timeouts of the stages: above, down, slide, up


class BowlNudge(ScenePoses):
    """Needs the pick-and-place expert's servo and bowl geometry; `_nudge_dir` is set by the rim choice."""

    def _away_from_overhead(self, centre: np.ndarray, radius: float, rim_z: float) -> np.ndarray:
        """Horizontal unit vector from what overhangs the bowl's surroundings to the bowl's centre."""
        angles = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
        pts = [
            centre + r * np.array([np.cos(a), np.sin(a), 0.0])
            for r in radius + np.array([0.0, 0.03, 0.06])
            for a in angles
        ]
        hits = self._overhead_hits(pts, rim_z + 0.04, rim_z + 0.35)
        away = centre[:2] - np.mean([h[:2] for h in hits], axis=0)
        away /= np.linalg.norm(away) + 1e-9
        return np.array([away[0], away[1], 0.0])

    def _nudge_act(self) -> tuple[np.ndarray, bool]:
        """Next action of the nudge and whether it is over (the bowl slid and the hand back up)."""
        eef, _ = self._eef()
        d = self._nudge_dir
        if self._nudge_start is None:
            centre, _, rim_z = self._bowl_frame()
            tip = centre + d * NUDGE_INSET
            self._nudge_start = np.array([tip[0], tip[1], rim_z - NUDGE_DEPTH + 0.011])
            # The hand's long side (its closing axis) across the slide, so it stays over the bowl's far side, and
            # its wrist link (which juts out along the hand's -x, 20 cm up) towards the slide, off the overhang.
            x0 = self._start_ori[:, 0] * np.array([1.0, 1.0, 0.0])
            x0 /= np.linalg.norm(x0) + 1e-9
            yaw = np.arctan2(x0[0] * -d[1] - x0[1] * -d[0], x0 @ -d)
            self.target_ori = Rotation.from_rotvec([0.0, 0.0, yaw]).as_matrix() @ self._start_ori
            self._nudge_stage, self._nudge_steps = 0, 0
        start = self._nudge_start
        self._nudge_steps += 1
        stage, done = self._nudge_stage, False
        if stage == 0:
            z = max(self._safe_z(), start[2] + 0.1)
            goal = np.array([start[0], start[1], z]) if eef[2] > z - 0.03 else np.array([eef[0], eef[1], z])
            a, _ = self._servo(goal, CLOSE)
            there = np.linalg.norm(eef[:2] - start[:2]) < 0.01 and self._rot_err() < 0.1
            step_on = there
        elif stage == 1:
            a, err = self._servo(start, CLOSE, max_speed=0.6)
            step_on = err < 0.006 or err < 0.015 and self._stalled()
        elif stage == 2:
            if self._nudge_steps == 1:  # slide level from where the tips stopped: pressing down holds the bowl
                self._nudge_goal = np.array([start[0], start[1], eef[2] + 0.003]) + d * NUDGE_DIST
            a, err = self._servo(self._nudge_goal, CLOSE, max_speed=NUDGE_SPEED)
            step_on = err < 0.01 or err < 0.03 and self._stalled()
        else:
            a, err = self._servo(np.array([eef[0], eef[1], start[2] + 0.12]), CLOSE)
            step_on = err < 0.02
        if step_on or self._nudge_steps > NUDGE_FRAMES[stage]:
            self._nudge_stage, self._nudge_steps = stage + 1, 0
            self._eef_hist = []
            done = stage == 3
        return a, done
