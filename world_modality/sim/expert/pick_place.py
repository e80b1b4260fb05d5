"""The on/in skill: pick the plan's object and place it on or in its target, as a waypoint state machine."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from world_modality.sim.env import LiberoEnv

from .grasp import GraspGeometry
from .motion import Motion
from .planner import parse_plan

OPEN, CLOSE = -1.0, 1.0
HOLD = 0.0  # the Panda gripper moves its finger target 0.25 of its range per control step by the
# sign of the command, so 0 holds the current opening
NARROW_PRECLOSE_FRAMES = 2  # 2 frames x 2 steps of CLOSE from open -> fingers at +-2 cm
# Phase step counters count expert decisions (= saved frames, each held for 2 control steps).
GRASP_FRAMES = 7  # fingers close fully in ~15 control steps
RELEASE_FRAMES = 5


class PickPlaceExpert(GraspGeometry, Motion):
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
            arrived = np.linalg.norm(eef[:2] - g[:2]) < 0.01 and abs(eef[2] - z) < 0.03 and self._rot_err() < 0.1
            if arrived or self.phase_steps > 50:
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
