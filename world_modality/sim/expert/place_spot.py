"""Where the held object is set down: the spot of the target (a body, or a LIBERO region site) where its footprint
rests on a flat, free support and LIBERO's On/In check holds, found by casting rays down over the region."""

from __future__ import annotations

import numpy as np

from .poses import ScenePoses

GRID = 0.01  # metres between the rays of the height map
FLAT_TOL = 0.012  # a footprint whose support heights spread more than this is not a flat resting place
REST_CLEARANCE = 0.012  # the held object's bottom is released this far above its support
ROBOT_PREFIXES = ("robot0_", "gripper0_")
RAY_TOP = 0.4  # rays start this far above the target


class PlaceSpot(ScenePoses):
    """Height map of the target area and the spot chosen on it for `self.plan` (needs `self.env`, `self.plan`)."""

    def _ignored_bodies(self) -> set[int]:
        """Bodies rays pass through: the robot and the object being placed."""
        m = self.env.sim_env.sim.model
        obj = self.plan.obj
        return {
            i
            for i in range(m.nbody)
            if (m.body_id2name(i) or "").startswith(ROBOT_PREFIXES) or (m.body_id2name(i) or "").startswith(obj)
        }

    def _surface_z(self, xy: np.ndarray, top: float, ignore: set[int]) -> float:
        """Height of the first colliding surface below (xy, top), through the ignored bodies."""
        import mujoco

        se = self.env.sim_env
        m, d = se.sim.model._model, se.sim.data._data
        geomid = np.zeros(1, dtype=np.int32)
        start = np.array([xy[0], xy[1], top], dtype=np.float64)
        down = np.array([0.0, 0.0, -1.0])
        for _ in range(12):
            dist = mujoco.mj_ray(m, d, start, down, None, 1, -1, geomid)
            if dist < 0:
                return -np.inf
            g = geomid[0]
            if m.geom_bodyid[g] not in ignore and (m.geom_contype[g] or m.geom_conaffinity[g]):
                return float(start[2] - dist)
            start[2] -= dist + 1e-4
        return -np.inf

    def _height_map(self, lo: np.ndarray, hi: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Support heights on a GRID lattice over the xy box lo..hi: (xs, ys, z[ix, iy])."""
        ignore = self._ignored_bodies()
        xs = np.arange(lo[0], hi[0] + 1e-9, GRID)
        ys = np.arange(lo[1], hi[1] + 1e-9, GRID)
        z = np.array([[self._surface_z(np.array([x, y]), top, ignore) for y in ys] for x in xs])
        return xs, ys, z

    def _footprint(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The held object's xy box relative to its body position, and its body position's height above its
        bottom (as it is held now)."""
        lo, hi = self._obj_extent(self.plan.obj)
        pos = self._pos(self.plan.obj)
        return lo[:2] - pos[:2], hi[:2] - pos[:2], float(pos[2] - lo[2])

    def _accepts(self, p: np.ndarray) -> bool:
        """LIBERO's geometric On/In test of the target for the object's body at `p` (contact is not checked)."""
        se = self.env.sim_env
        target = self.plan.target
        if target in se.object_sites_dict and target not in se.obj_body_id:
            site = se.object_sites_dict[target]
            s, mat = se.sim.data.get_site_xpos(target), se.sim.data.get_site_xmat(target)
            if self.plan.relation == "in":
                return bool(site.in_box(s, mat, p))
            return bool(site.under(s, mat, p)) if hasattr(site, "under") else True
        t = self._pos(target)
        return bool(np.linalg.norm(p[:2] - t[:2]) < 0.03 and p[2] >= t[2])

    def _region_box(self) -> tuple[np.ndarray, np.ndarray]:
        """xy box that holds every point of the target's acceptance area."""
        se = self.env.sim_env
        target = self.plan.target
        if target in se.object_sites_dict and target not in se.obj_body_id:
            site = se.object_sites_dict[target]
            s, mat = se.sim.data.get_site_xpos(target), se.sim.data.get_site_xmat(target)
            half = np.abs(mat) @ np.abs(np.asarray(site.size, dtype=float)) if self.plan.relation == "in" else None
            if half is None:  # `under` measures in mat @ (p - s): its xy half sizes, mapped back
                half = np.abs(mat.T) @ np.r_[np.abs(np.asarray(site.size, dtype=float))[:2], 0.1]
            return s[:2] - half[:2], s[:2] + half[:2]
        t = self._pos(target)
        return t[:2] - 0.03, t[:2] + 0.03

    def _choose_spot(self) -> tuple[np.ndarray, float] | None:
        """(xy of the body position, bottom height at release) of the freest accepted flat spot, or None.

        Each candidate (a lattice point of the target's area) is the held object's footprint set there: its
        support is the highest surface under it, which must be flat (FLAT_TOL) and give a resting pose LIBERO
        accepts. Of those, the one farthest from any rejected candidate (walls, other objects, the region's edge).
        """
        foot_lo, foot_hi, above_bottom = self._footprint()
        rlo, rhi = self._region_box()
        pad = 0.02
        clo, chi = rlo - pad, rhi + pad  # candidates, the ring outside the region always rejected
        top = max(self._pos(self.plan.target)[2], self._eef()[0][2]) + RAY_TOP
        xs, ys, z = self._height_map(clo + foot_lo, chi + foot_hi, top)
        cx = np.arange(clo[0], chi[0] + 1e-9, GRID)
        cy = np.arange(clo[1], chi[1] + 1e-9, GRID)
        nfx = int(round((foot_hi[0] - foot_lo[0]) / GRID)) + 1
        nfy = int(round((foot_hi[1] - foot_lo[1]) / GRID)) + 1
        ok = np.zeros((len(cx), len(cy)), dtype=bool)
        rest = np.full(ok.shape, np.nan)
        for i in range(len(cx)):
            for j in range(len(cy)):
                win = z[i : i + nfx, j : j + nfy]
                if not np.isfinite(win).all() or win.max() - win.min() > FLAT_TOL:
                    continue
                rest[i, j] = win.max()
                p = np.array([cx[i], cy[j], win.max() + above_bottom])
                ok[i, j] = self._accepts(p)
        if not ok.any():
            return None
        bad = np.argwhere(~ok)
        good = np.argwhere(ok)
        centre = (rlo + rhi) / 2
        best, best_key = None, None
        for i, j in good:
            clear = np.min(np.hypot(*(bad - [i, j]).T)) * GRID if len(bad) else 1.0
            key = (round(clear, 3), -np.hypot(cx[i] - centre[0], cy[j] - centre[1]))
            if best_key is None or key > best_key:
                best, best_key = (i, j), key
        i, j = best
        return np.array([cx[i], cy[j]]), float(rest[i, j] + REST_CLEARANCE)
