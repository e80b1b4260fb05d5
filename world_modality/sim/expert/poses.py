"""Privileged poses read from the simulator: object positions and bounding boxes, the eef pose, and the
highest object along a path."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


class ScenePoses:
    """Reads of `self.env` (a LiberoEnv) for the expert; `self.plan` names the object being picked."""

    env: object
    plan: object
    _box_cache: dict[str, np.ndarray]

    def _pos(self, name: str) -> np.ndarray:
        return np.array(self.env.sim_env.object_states_dict[name].get_geom_state()["pos"], dtype=np.float64)

    def _local_box(self, name: str) -> np.ndarray:
        """8 corners of an object's bounding box in its body frame (cached: objects are rigid)."""
        if name not in self._box_cache:
            se = self.env.sim_env
            sim, m = se.sim, se.sim.model
            root = se.obj_body_id[name]
            body_ids = {i for i in range(m.nbody) if (m.body_id2name(i) or "").startswith(name)}
            geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] in body_ids]
            # Visual meshes bound the shape tightly; collision boxes are rotated and inflate the box.
            visual = [g for g in geoms if m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0]
            signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
            rot_b = sim.data.body_xmat[root].reshape(3, 3)
            pts = []
            for g in visual or geoms:
                mesh = m.geom_dataid[g]
                if m.geom_type[g] == 7 and mesh >= 0:  # exact mesh vertices
                    start = m.mesh_vertadr[mesh]
                    local = m.mesh_vert[start : start + m.mesh_vertnum[mesh]]
                else:
                    aabb = m.geom_aabb[g]  # centre (3) + half sizes (3), in the geom frame
                    local = aabb[:3] + signs * aabb[3:]
                world = sim.data.geom_xpos[g] + local @ sim.data.geom_xmat[g].reshape(3, 3).T
                pts.append((world - sim.data.body_xpos[root]) @ rot_b)
            pts = np.concatenate(pts)
            lo, hi = pts.min(0), pts.max(0)
            self._box_cache[name] = lo + (signs + 1) / 2 * (hi - lo)
        return self._box_cache[name]

    def _obj_extent(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World AABB (lo, hi) of an object, from its body-frame box and current body pose."""
        se = self.env.sim_env
        if name not in se.obj_body_id:  # sites (e.g. basket regions) have no geometry
            p = self._pos(name)
            return p, p
        root = se.obj_body_id[name]
        corners = se.sim.data.body_xpos[root] + self._local_box(name) @ se.sim.data.body_xmat[root].reshape(3, 3).T
        return corners.min(0), corners.max(0)

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        raw = self.env.raw_obs
        return np.array(raw["robot0_eef_pos"]), Rotation.from_quat(raw["robot0_eef_quat"]).as_matrix()

    def _obj_pose(self) -> tuple[np.ndarray, np.ndarray]:
        se = self.env.sim_env
        root = se.obj_body_id[self.plan.obj]
        return np.array(se.sim.data.body_xpos[root]), np.array(se.sim.data.body_xmat[root]).reshape(3, 3)

    def _corridor_top(self, a: np.ndarray, b: np.ndarray, exclude: tuple[str, ...] = (), pad: float = 0.06) -> float:
        """Highest top of any object/fixture whose xy box (grown by `pad`) meets the segment a->b in xy."""
        se = self.env.sim_env
        pts = a[:2] + np.linspace(0.0, 1.0, 25)[:, None] * (b[:2] - a[:2])
        top = -np.inf
        for name in se.obj_body_id:
            if name in exclude:
                continue
            lo, hi = self._obj_extent(name)
            inside = np.all((pts >= lo[:2] - pad) & (pts <= hi[:2] + pad), axis=1)
            if inside.any():
                top = max(top, hi[2])
        return top

    def _overhead_hits(self, points, level: float, top: float) -> list[np.ndarray]:
        """Where straight-down rays from height `top` over the xy `points` first meet something above `level`
        (colliding geoms only; the robot and the object being picked are seen through)."""
        import mujoco

        se = self.env.sim_env
        m, d = se.sim.model._model, se.sim.data._data
        skip = {
            i
            for i in range(m.nbody)
            if (se.sim.model.body_id2name(i) or "").startswith(("robot0_", "gripper0_", self.plan.obj))
        }
        geomid = np.zeros(1, dtype=np.int32)
        down = np.array([0.0, 0.0, -1.0])
        hits = []
        for p in points:
            start = np.array([p[0], p[1], top], dtype=np.float64)
            for _ in range(8):
                dist = mujoco.mj_ray(m, d, start, down, None, 1, -1, geomid)
                if dist < 0 or start[2] - dist < level:
                    break
                g = geomid[0]
                if m.geom_bodyid[g] not in skip and (m.geom_contype[g] or m.geom_conaffinity[g]):
                    hits.append(np.array([p[0], p[1], start[2] - dist]))
                    break
                start[2] -= dist + 1e-4
        return hits
