"""Laying a tall object down on a sloped target (a bottle on a wine rack's slanted shelf): LIBERO's On check of a
tilted region site wants the object's base in a thin slab along the slope, so it is held by its top, turned about
the horizontal axis across the slope until it lies along it, and set down on the shelf there."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from .poses import ScenePoses

LAY_MIN_TILT = np.deg2rad(30.0)  # a region whose On axis leans more than this from vertical is laid on
LAY_ALONG = 0.03  # the base lands this far up the slope from the region's centre (LIBERO accepts 0 .. 0.10)
LAY_ABOVE = 0.03  # and this far above it along the shelf's normal: the object rests on the shelf
LAY_SIDE = 0.06  # and this far to the side of the shelf's middle (a post stands there), towards the robot
LAY_HOVER = 0.06  # the held object first hovers this far above its resting place


class LayPlace(ScenePoses):
    """Geometry of a lay placement of `self.plan`'s object on its target region."""

    def _lay_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(up-slope, shelf normal, across) unit vectors when the target is a tilted On region, else None."""
        se = self.env.sim_env
        target = self.plan.target
        if self.plan.relation != "on" or target in se.obj_body_id or target not in se.object_sites_dict:
            return None
        if not hasattr(se.object_sites_dict[target], "under"):
            return None
        mat = se.sim.data.get_site_xmat(target)
        up = np.array(mat[2, :])  # `under` measures the height above the region along this row
        if np.arccos(np.clip(abs(up[2]), 0.0, 1.0)) < LAY_MIN_TILT:
            return None
        up = up if up[2] > 0 else -up
        normal = np.array(mat[1, :])
        normal = normal if normal[2] > 0 else -normal
        across = np.cross(normal, up)
        return up, normal, across / np.linalg.norm(across)

    def _lay_target(self) -> tuple[np.ndarray, np.ndarray]:
        """Resting body position on the shelf and the hand orientation that lays the object along the slope
        (pointing down the slope, the fingers closing across it)."""
        up, normal, across = self._lay_axes()
        s = np.array(self.env.sim_env.sim.data.get_site_xpos(self.plan.target))
        robot = np.array(self.env.sim_env.robots[0].base_pos, dtype=float)
        side = across if np.linalg.norm(s + across - robot) < np.linalg.norm(s - across - robot) else -across
        p = s + up * LAY_ALONG + normal * LAY_ABOVE + side * LAY_SIDE
        point = -up  # the object hangs from its top: the hand points from the top to the base
        down = np.array([0.0, 0.0, -1.0])
        axis = np.cross(down, point)
        angle = np.arccos(np.clip(down @ point, -1.0, 1.0))
        turn = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
        return p, turn @ self._grasp_ori

    def _lay_closing_axis(self) -> np.ndarray:
        """Horizontal direction the fingers close along for a lay grasp (the turn's axis: it stays put)."""
        up, _, _ = self._lay_axes()
        a = np.cross([0.0, 0.0, 1.0], up)
        return a / np.linalg.norm(a)

    def _lay_eef_goal(self, hover: bool) -> np.ndarray:
        """Eef position that puts the held object's body on (or, hovering, above) its resting place, from where
        the body sits in the hand now."""
        p, ori = self._lay_target()
        eef, rot = self._eef()
        in_hand = rot.T @ (self._pos(self.plan.obj) - eef)
        goal = p - ori @ in_hand
        if hover:
            goal = goal + np.array([0.0, 0.0, LAY_HOVER])
        return goal
