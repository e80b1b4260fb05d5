"""Scripted privileged-state pick-and-place expert for LIBERO (reads object poses from the sim)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from world_modality.sim.env import LiberoEnv

POS_GAIN = 25.0  # action units per metre; OSC maps 1.0 to a 5 cm goal offset, so >20 overshoots the
# goal slightly, which cancels OSC's steady-state lag (at 12 the eef stalled ~1 cm short)
ROT_GAIN = 2.0  # action units per radian; OSC maps 1.0 to 0.5 rad
OPEN, CLOSE = -1.0, 1.0
FINGER_TIP_BELOW_EEF = 0.011  # measured: finger tips sit ~1.1 cm below the eef site
APPROACH_CLEARANCE = 0.07  # eef above the highest object/fixture between the eef and the object
# Phase step counters count expert decisions (= saved frames, each held for 2 control steps).
GRASP_FRAMES = 7  # fingers close fully in ~15 control steps
RELEASE_FRAMES = 5
CARRY_CLEARANCE = 0.04  # held object's bottom above the highest object/fixture on the way to the target


@dataclass
class Plan:
    """What to move where, parsed from the task's BDDL goal."""

    obj: str  # body to pick
    target: str  # object or site to place it on / in
    relation: str  # 'on' or 'in'


def parse_plan(env: LiberoEnv) -> Plan:
    """Pick-and-place plan from the single goal predicate (On/In obj target); else unsupported."""
    goal = env.sim_env.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("on", "in"):
        raise NotImplementedError(f"Scripted expert handles one On/In goal, got {goal} ({env.task_name}).")
    rel, obj, target = goal[0]
    return Plan(obj=obj, target=target, relation=rel.lower())


class PickPlaceExpert:
    """Waypoint state machine: approach, descend, grasp, lift, carry, lower, release, retreat."""

    PHASES = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat", "done")

    def __init__(self, env: LiberoEnv, carry_height: float = 0.12, noise: float = 0.0, rng=None):
        self.env, self.carry_height, self.noise = env, carry_height, noise
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.plan = parse_plan(env)
        self.phase = "approach"
        self.phase_steps = 0
        self.grasp_offset = None  # object position minus eef position, fixed once grasped
        self.target_ori = None
        self._box_cache: dict[str, np.ndarray] = {}
        self._travel_z: float | None = None
        self._carry_travel_z: float | None = None

    # --- privileged reads ---------------------------------------------------------------------
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

    # --- grasp geometry -----------------------------------------------------------------------
    def _grasp_point(self) -> np.ndarray:
        obj = self.plan.obj
        lo, hi = self._obj_extent(obj)
        centre = (lo + hi) / 2  # geometric centre; bowl body origins sit ~7 mm off it
        _, rot = self._eef()
        finger_axis = rot[:, 1] * np.array([1, 1, 0])  # fingers close along the gripper's y axis
        finger_axis /= np.linalg.norm(finger_axis) + 1e-9
        if "bowl" in obj:
            # Bowls are hollow: pinch the rim wall, offset from the centre along the closing axis.
            # Take the rim on the side facing y=0: cabinets and stoves stand at the table's sides.
            if np.dot(finger_axis, [0.0, -np.sign(centre[1]), 0.0]) < 0:
                finger_axis = -finger_axis
            # Work in the bowl's frame: a bowl resting on a ramekin tilts, and its world AABB top is
            # then the high side of the rim, centimetres above the side we grasp (task 5).
            se = self.env.sim_env
            root = se.obj_body_id[obj]
            pos_b = se.sim.data.body_xpos[root]
            rot_b = se.sim.data.body_xmat[root].reshape(3, 3)
            box = self._local_box(obj)
            llo, lhi = box.min(0), box.max(0)
            axis_l = rot_b.T @ finger_axis
            axis_l[2] = 0.0
            axis_l /= np.linalg.norm(axis_l) + 1e-9
            radius = 0.5 * min(lhi[0] - llo[0], lhi[1] - llo[1])
            local = (llo + lhi) / 2 + axis_l * (radius - 0.01)
            local[2] = lhi[2] - 0.03
            p = pos_b + rot_b @ local
        else:
            p = np.array([centre[0], centre[1], 0.0])
            height = hi[2] - lo[2]
            p[2] = hi[2] - min(0.04, 0.5 * height)
        p[2] += FINGER_TIP_BELOW_EEF
        return p

    def _target_xy(self) -> np.ndarray:
        return self._pos(self.plan.target)[:2]

    def _target_top(self) -> float:
        """Height the held object's bottom must clear to be set down on / dropped into the target."""
        se = self.env.sim_env
        if self.plan.relation == "in":
            # A container region (e.g. basket_1_contain_region) belongs to the object it is named
            # after: clear that object's rim, then drop into it.
            owners = [n for n in se.obj_body_id if self.plan.target.startswith(n + "_")]
            if owners:
                return float(self._obj_extent(max(owners, key=len))[1][2])
            return float(self._pos(self.plan.target)[2] + 0.06)
        return float(self._obj_extent(self.plan.target)[1][2])

    def _place_point(self) -> np.ndarray:
        """Where the eef goes so the held object's centre lands on/in the target."""
        target = self._pos(self.plan.target)
        obj_lo, _ = self._obj_extent(self.plan.obj)
        obj_pos = self._pos(self.plan.obj)
        eef, _ = self._eef()
        # Close the loop on the object's actual position (it can slip in the fingers).
        p = eef + np.array([target[0] - obj_pos[0], target[1] - obj_pos[1], 0.0])
        p[2] = eef[2] + (self._target_top() + 0.02 - obj_lo[2])
        return p

    def _grasp_yaw(self) -> float:
        """Yaw (rad, |yaw| <= pi/2) that makes the fingers close across the object's narrow side."""
        obj = self.plan.obj
        if "bowl" in obj:
            return 0.0  # bowls are pinched at the rim (see _grasp_point)
        se = self.env.sim_env
        rot_b = se.sim.data.body_xmat[se.obj_body_id[obj]].reshape(3, 3)
        box = self._local_box(obj)
        size = box.max(0) - box.min(0)
        horiz = np.argsort(np.abs(rot_b[2, :]))[:2]  # the two body axes closest to horizontal
        widths = size[horiz]
        if abs(widths[0] - widths[1]) < 0.008:
            return 0.0
        narrow = rot_b[:, horiz[np.argmin(widths)]].copy()
        narrow[2] = 0.0
        _, rot = self._eef()
        finger = rot[:, 1].copy()
        finger[2] = 0.0
        yaw = np.arctan2(finger[0] * narrow[1] - finger[1] * narrow[0], finger @ narrow)
        return float((yaw + np.pi / 2) % np.pi - np.pi / 2)

    # --- control ------------------------------------------------------------------------------
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

    def _rot_err(self) -> float:
        _, rot = self._eef()
        return float(np.linalg.norm(Rotation.from_matrix(self.target_ori @ rot.T).as_rotvec()))

    def _next(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

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

    def act(self) -> np.ndarray:
        """Next 7-D action for the current sim state."""
        if self.target_ori is None:
            yaw = self._grasp_yaw()
            self.target_ori = Rotation.from_rotvec([0.0, 0.0, yaw]).as_matrix() @ self._eef()[1]
        self.phase_steps += 1
        eef, _ = self._eef()
        p = self.phase
        if p == "approach":
            # Rise first, then travel level: straight diagonal paths clipped cabinets (task 6).
            g = self._grasp_point()
            z = self._safe_z()
            goal = np.array([g[0], g[1], z]) if eef[2] > z - 0.03 else np.array([eef[0], eef[1], z])
            a, err = self._servo(goal, OPEN)
            if np.linalg.norm(eef[:2] - g[:2]) < 0.01 and abs(eef[2] - z) < 0.03 and self._rot_err() < 0.1 or self.phase_steps > 50:
                self._next("descend")
        elif p == "descend":
            a, err = self._servo(self._grasp_point(), OPEN, max_speed=0.6)
            if err < 0.005 or self.phase_steps > 25:
                self._next("grasp")
        elif p == "grasp":
            a, _ = self._servo(self._grasp_point(), CLOSE, max_speed=0.3)
            a[:3] = 0.0
            if self.phase_steps >= GRASP_FRAMES:
                self._next("lift")
        elif p == "lift":
            goal = np.array([eef[0], eef[1], self._carry_z()])
            a, err = self._servo(goal, CLOSE)
            if err < 0.02 or self.phase_steps > 30:
                self._next("carry")
        elif p == "carry":
            goal = self._place_point()
            goal[2] = self._carry_z()  # stay high until above the target
            a, _ = self._servo(goal, CLOSE)
            if np.linalg.norm((goal - eef)[:2]) < 0.008 or self.phase_steps > 50:
                self._next("lower")
        elif p == "lower":
            goal = self._place_point()
            a, err = self._servo(goal, CLOSE, max_speed=0.5)
            if err < 0.008 or self.phase_steps > 30:
                self._next("release")
        elif p == "release":
            a = np.zeros(7)
            a[6] = OPEN
            if self.phase_steps >= RELEASE_FRAMES:
                self.retreat_goal = eef + np.array([0, 0, 0.08])
                self._next("retreat")
        elif p == "retreat":
            a, err = self._servo(self.retreat_goal, OPEN)
            if err < 0.02 or self.phase_steps > 15:
                self._next("done")
        else:
            a = np.zeros(7)
            a[6] = OPEN
        return a


def run_episode(env: LiberoEnv, init_state_index: int, render: bool = False,
                control_steps_per_frame: int = 2, trace: list | None = None, **expert_kw) -> dict:
    """Roll the expert out once, holding each action for `control_steps_per_frame` control steps.

    This is the regime of `record.record_demo` (10 fps dataset, 20 Hz sim): the expert decides once
    per saved frame. Returns success, control steps, frames and the phase at the end. If `trace` is a
    list, one dict per frame (phase, eef, object position, action) is appended to it.
    """
    env.reset(init_state_index, render=False)
    expert = PickPlaceExpert(env, **expert_kw)
    success, done, t, frames = False, False, 0, 0
    while not done:
        phase = expert.phase
        action = expert.act()
        if trace is not None:
            trace.append({"frame": frames, "phase": phase, "eef": np.array(env.raw_obs["robot0_eef_pos"]),
                          "obj": expert._pos(expert.plan.obj), "action": action.copy()})
        frames += 1
        for _ in range(control_steps_per_frame):
            _, done, success, info = env.step(action, render=render)
            t = info["t"]
            if done:
                break
    return {"success": success, "steps": t, "frames": frames, "phase": expert.phase}
