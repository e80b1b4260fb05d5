"""Scripted privileged-state pick-and-place expert for LIBERO (reads object poses from the sim).

The expert is queried once per saved dataset frame and each action is held for 2 control steps
(10 fps data, 20 Hz sim; see `record.record_demo` and `run_episode`), so every phase counter and
timeout below counts frames. Travel heights come from the scene (start pose and the objects and
fixtures under the path), so table scenes (libero_spatial/goal) and the floor scene
(libero_object) use the same code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from world_modality.sim.env import LiberoEnv

POS_GAIN = 25.0  # action units per metre; OSC maps 1.0 to a 5 cm goal offset, so >20 overshoots the
# goal slightly, which cancels OSC's steady-state lag (at 12 the eef stalled ~1 cm short)
ROT_GAIN = 2.0  # action units per radian; OSC maps 1.0 to 0.5 rad
OPEN, CLOSE = -1.0, 1.0
HOLD = 0.0  # the Panda gripper moves its finger target 0.25 of its range per control step by the
# sign of the command, so 0 holds the current opening
NARROW_PRECLOSE_FRAMES = 2  # 2 frames x 2 steps of CLOSE from open -> fingers at +-2 cm
FINGER_TIP_BELOW_EEF = 0.011  # measured: finger tips sit ~1.1 cm below the eef site
APPROACH_CLEARANCE = 0.07  # eef above the highest object/fixture between the eef and the object
# Gripper footprint used to keep the palm and open fingers off neighbouring objects (metres).
HAND_HALF_LENGTH = 0.105  # palm along the finger closing axis
HAND_HALF_WIDTH = 0.03
PALM_ABOVE_EEF = 0.045  # palm underside above the eef site
FINGER_OPEN_HALF = 0.045  # open finger centre from the eef axis, along the closing axis
TILTED_BOWL_DEG = 20.0  # bowls tilted more than this are pinched on their tilt axis
HIGH_BOWL_ABOVE_BASE = 0.23  # rim this far above the robot base: grasp on the robot's side
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
        self._rim_dir: np.ndarray | None = None
        self._yaw: float | None = None
        self._narrow = False  # pre-closed gripper (4 cm opening) for bowls with no room around
        self._preclose_frames = 0
        self._plan_pose = None
        self._start_ori = None
        self._eef_hist: list[np.ndarray] = []
        self._grasp_shift = np.zeros(3)

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
            # Bowls are hollow: pinch the rim wall, on the side chosen once by _rim_direction (the
            # gripper is yawed so that its fingers close along that radial direction).
            finger_axis = self._rim_direction()
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
            self._grasp_yaw()  # picks the side-grasp offset along with the yaw
            p = np.array([centre[0], centre[1], 0.0]) + self._grasp_shift
            height = hi[2] - lo[2]
            p[2] = hi[2] - min(0.04, 0.5 * height)
        p[2] += FINGER_TIP_BELOW_EEF
        return p

    def _bowl_frame(self) -> tuple[np.ndarray, float, float]:
        """World centre (xy), rim radius and rim height of the bowl being picked."""
        se = self.env.sim_env
        root = se.obj_body_id[self.plan.obj]
        rot_b = se.sim.data.body_xmat[root].reshape(3, 3)
        box = self._local_box(self.plan.obj)
        llo, lhi = box.min(0), box.max(0)
        centre = se.sim.data.body_xpos[root] + rot_b @ ((llo + lhi) / 2)
        radius = 0.5 * min(lhi[0] - llo[0], lhi[1] - llo[1])
        return centre, radius, float(self._obj_extent(self.plan.obj)[1][2])

    def _rim_direction(self) -> np.ndarray:
        """Horizontal unit vector from the bowl centre to the rim point to pinch.

        Cached; re-planned (with the yaw) only if the bowl moves during the approach. Default: the
        side facing y=0 along the gripper's closing axis (cabinets and stoves stand at the table's
        sides); a bowl tilted > TILTED_BOWL_DEG is pinched on its tilt axis; a bowl high above the
        robot base (on a cabinet) on the side facing the robot. If something (a drawer wall, a
        neighbouring object) stands where the outer finger has to go down, the direction is turned
        in 15 degree steps to the nearest free one, found by casting rays straight down around the
        rim; with no free side for the open gripper, the gripper is pre-closed (`_narrow`).
        """
        if self._rim_dir is not None:
            return self._rim_dir
        import mujoco

        se = self.env.sim_env
        m, d = se.sim.model._model, se.sim.data._data
        bowl_bodies = {i for i in range(m.nbody) if (se.sim.model.body_id2name(i) or "").startswith(self.plan.obj)}
        centre, radius, rim_z = self._bowl_frame()
        rot = self._start_ori if self._start_ori is not None else self._eef()[1]
        base = rot[:, 1] * np.array([1, 1, 0])
        base /= np.linalg.norm(base) + 1e-9
        root = se.obj_body_id[self.plan.obj]
        axis_b = se.sim.data.body_xmat[root].reshape(3, 3)[:, 2]
        if axis_b[2] < np.cos(np.deg2rad(TILTED_BOWL_DEG)):
            # A bowl that slid off a ramekin leans on its edge: its wall is vertical (and the pinch
            # horizontal) only at the two rim points on the tilt axis, so take one of those.
            base = np.array([-axis_b[1], axis_b[0], 0.0])
            base /= np.linalg.norm(base) + 1e-9
        if np.dot(base, [0.0, -np.sign(centre[1]), 0.0]) < 0:
            base = -base
        robot = np.array(se.robots[0].base_pos, dtype=np.float64)
        if rim_z - robot[2] > HIGH_BOWL_ABOVE_BASE and axis_b[2] >= np.cos(np.deg2rad(TILTED_BOWL_DEG)):
            # A bowl high above the robot's base (on a cabinet) is at the edge of the arm's reach
            # with the gripper pointing down: pinch the rim on the side facing the robot.
            base = (robot - centre) * np.array([1.0, 1.0, 0.0])
            base /= np.linalg.norm(base) + 1e-9
        base_angle = np.arctan2(base[1], base[0])
        geomid = np.zeros(1, dtype=np.int32)
        down = np.array([0.0, 0.0, -1.0])
        floor_z = rim_z - 0.045  # the outer finger tip reaches ~3 cm below the rim when grasping

        def obstacle_top(angle: float, reach: float) -> float:
            radial = np.array([np.cos(angle), np.sin(angle), 0.0])
            tangent = np.array([-radial[1], radial[0], 0.0])
            top = -np.inf
            for dr in np.linspace(0.004, reach, 5):
                for dt in (-0.012, 0.0, 0.012):
                    start = centre + radial * (radius + dr) + tangent * dt
                    start[2] = rim_z + 0.04
                    dist = mujoco.mj_ray(m, d, start, down, None, 1, -1, geomid)
                    if dist < 0 or m.geom_bodyid[geomid[0]] in bowl_bodies:
                        continue
                    top = max(top, start[2] - dist)
            return top

        # The fully open outer finger reaches ~4.5 cm past the rim; if no side is free for it
        # (a bowl in a drawer), pre-close the gripper to a 4 cm opening (reach ~2.5 cm).
        angles = [base_angle + np.deg2rad(15 * k) for k in
                  (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8, 9, -9, 10, -10, 11, -11, 12)]
        best, best_top = base_angle, np.inf
        for narrow, reach in ((False, 0.045), (True, 0.025)):
            for angle in angles:
                top = obstacle_top(angle, reach)
                if top < floor_z:
                    self._narrow = narrow
                    self._rim_dir = np.array([np.cos(angle), np.sin(angle), 0.0])
                    return self._rim_dir
                if narrow and top < best_top:
                    best, best_top = angle, top
        self._narrow = True
        self._rim_dir = np.array([np.cos(best), np.sin(best), 0.0])
        return self._rim_dir

    def _open_cmd(self) -> float:
        """Gripper command while approaching: open, or (narrow grasp) close twice then hold."""
        if not self._narrow:
            return OPEN
        if self._preclose_frames < NARROW_PRECLOSE_FRAMES:
            self._preclose_frames += 1
            return CLOSE
        return HOLD

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

    def _hand_hits(self, xy: np.ndarray, finger: np.ndarray, eef_z: float) -> int:
        """How many sample points of the hand/finger footprint at a grasp pose hit other objects."""
        perp = np.array([-finger[1], finger[0]])
        pts, zs = [], []
        for u in np.linspace(-HAND_HALF_LENGTH, HAND_HALF_LENGTH, 13):  # palm, above the fingers
            for v in (-HAND_HALF_WIDTH, 0.0, HAND_HALF_WIDTH):
                pts.append(xy + u * finger + v * perp)
                zs.append(eef_z + PALM_ABOVE_EEF)
        for u in (-FINGER_OPEN_HALF, FINGER_OPEN_HALF):  # open fingers, down to the tips
            for v in (-0.01, 0.0, 0.01):
                pts.append(xy + u * finger + v * perp)
                zs.append(eef_z - FINGER_TIP_BELOW_EEF)
        pts, zs = np.array(pts), np.array(zs)
        hits = 0
        for name in self.env.sim_env.obj_body_id:
            if name == self.plan.obj:
                continue
            lo, hi = self._obj_extent(name)
            inside = np.all((pts >= lo[:2]) & (pts <= hi[:2]), axis=1) & (zs < hi[2])
            hits += int(inside.sum())
        return hits

    def _grasp_yaw(self) -> float:
        """Yaw (rad, |yaw| <= pi/2) of the grasp, chosen once with the grasp point's side shift.

        Bowls: fingers close along the radial direction of the chosen rim point. Other objects:
        fingers close across a horizontal side the open gripper spans, preferring the narrow side;
        if the palm or a finger would come down on a neighbour, the grasp slides along the object's
        other axis (or turns 90 degrees) to the nearest pose whose footprint is clear.
        """
        if self._yaw is not None:
            return self._yaw
        obj = self.plan.obj
        se = self.env.sim_env
        rot = self._start_ori if self._start_ori is not None else self._eef()[1]
        finger = rot[:, 1].copy()
        finger[2] = 0.0
        finger /= np.linalg.norm(finger) + 1e-9

        def yaw_to(axis: np.ndarray) -> float:
            yaw = np.arctan2(finger[0] * axis[1] - finger[1] * axis[0], finger @ axis)
            return float((yaw + np.pi / 2) % np.pi - np.pi / 2)

        self._grasp_shift = np.zeros(3)
        if "bowl" in obj:  # close the fingers along the radial direction of the chosen rim point
            self._yaw = yaw_to(self._rim_direction())
            return self._yaw
        rot_b = se.sim.data.body_xmat[se.obj_body_id[obj]].reshape(3, 3)
        box = self._local_box(obj)
        size = box.max(0) - box.min(0)
        horiz = np.argsort(np.abs(rot_b[2, :]))[:2]  # the two body axes closest to horizontal
        order = horiz[np.argsort(size[horiz])]  # narrow first
        lo, hi = self._obj_extent(obj)
        centre = (lo + hi) / 2
        grasp_z = hi[2] - min(0.04, 0.5 * (hi[2] - lo[2])) + FINGER_TIP_BELOW_EEF
        candidates = []  # (cost, yaw, shift)
        for rank, ax in enumerate(order):
            if rank == 1 and size[ax] > 0.075:
                continue  # the open gripper (8 cm) cannot span it
            if rank == 1 and abs(size[order[0]] - size[ax]) < 0.008:
                continue
            axis = rot_b[:, ax].copy()
            axis[2] = 0.0
            axis /= np.linalg.norm(axis) + 1e-9
            yaw = yaw_to(axis) if abs(size[order[0]] - size[order[1]]) >= 0.008 else 0.0
            f = Rotation.from_rotvec([0.0, 0.0, yaw]).as_matrix() @ finger
            perp_axis = np.array([-f[1], f[0], 0.0])
            other = order[1 - rank]
            max_shift = max(0.0, 0.5 * size[other] - 0.015)
            for shift in np.arange(0.0, max_shift + 1e-9, 0.01):
                for sgn in ((1.0,) if shift == 0 else (1.0, -1.0)):
                    sh = sgn * shift * perp_axis
                    hits = self._hand_hits(centre[:2] + sh[:2], f[:2], grasp_z)
                    candidates.append((hits, rank, shift, yaw, sh))
        if not candidates:
            self._yaw = 0.0
            return self._yaw
        hits, rank, shift, yaw, sh = min(candidates, key=lambda c: (c[0], c[1], c[2]))
        self._yaw, self._grasp_shift = yaw, sh
        return self._yaw

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

    def _obj_pose(self) -> tuple[np.ndarray, np.ndarray]:
        se = self.env.sim_env
        root = se.obj_body_id[self.plan.obj]
        return np.array(se.sim.data.body_xpos[root]), np.array(se.sim.data.body_xmat[root]).reshape(3, 3)

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
            self._start_ori = self._eef()[1]
        if "bowl" in self.plan.obj and self.phase == "approach" and self._moved_since_plan():
            # Objects can still settle after the no-op steps (a bowl sliding off a ramekin): re-plan
            # the grasp side and yaw while the gripper is still on its way.
            self._rim_dir, self._yaw, self._narrow = None, None, False
            self.target_ori = None
        if self.target_ori is None:
            self._plan_pose = self._obj_pose()
            yaw = self._grasp_yaw()
            self.target_ori = Rotation.from_rotvec([0.0, 0.0, yaw]).as_matrix() @ self._start_ori
        self.phase_steps += 1
        eef, _ = self._eef()
        self._eef_hist.append(eef)
        p = self.phase
        if p == "approach":
            # Rise first, then travel level: straight diagonal paths clipped cabinets (task 6).
            g = self._grasp_point()
            z = self._safe_z()
            goal = np.array([g[0], g[1], z]) if eef[2] > z - 0.03 else np.array([eef[0], eef[1], z])
            a, err = self._servo(goal, self._open_cmd())
            if np.linalg.norm(eef[:2] - g[:2]) < 0.01 and abs(eef[2] - z) < 0.03 and self._rot_err() < 0.1 or self.phase_steps > 50:
                self._next("descend")
        elif p == "descend":
            g = self._grasp_point()
            # Full speed while well above the grasp point, slow for the last 5 cm.
            a, err = self._servo(g, self._open_cmd(), max_speed=1.0 if eef[2] - g[2] > 0.05 else 0.6)
            if err < 0.005 or err < 0.012 and self._stalled() or self.phase_steps > 25:
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
            xy_err = np.linalg.norm((goal - eef)[:2])
            # Near the edge of the workspace OSC can stall ~1 cm short (no integral term): go on.
            if xy_err < 0.008 or xy_err < 0.02 and self._stalled() or self.phase_steps > 50:
                self._next("lower")
        elif p == "lower":
            goal = self._place_point()
            a, err = self._servo(goal, CLOSE, max_speed=1.0 if eef[2] - goal[2] > 0.05 else 0.5)
            if err < 0.008 or err < 0.02 and self._stalled() or self.phase_steps > 30:
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
