"""The on/in skill: pick the plan's object and place it on or in its target, as a waypoint state machine."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from world_modality.sim.env import LiberoEnv

from .grasp import GraspGeometry
from .lay import LayPlace
from .motion import Motion
from .nudge import BowlNudge
from .place_spot import REST_CLEARANCE, PlaceSpot
from .planner import Step, parse_plan

OPEN, CLOSE = -1.0, 1.0
HOLD = 0.0  # the Panda gripper moves its finger target 0.25 of its range per control step by the
# sign of the command, so 0 holds the current opening
NARROW_PRECLOSE_FRAMES = 2  # 2 frames x 2 steps of CLOSE from open -> fingers at +-2 cm
# Phase step counters count expert decisions (= saved frames, each held for 2 control steps).
GRASP_FRAMES = 7  # fingers close fully in ~15 control steps
RELEASE_FRAMES = 5
OPEN_GAP = 0.08  # metres between the open fingers
# An object whose body rose less than this fraction of the hand's rise stayed behind. A bowl pinched at its rim
# tilts as it leaves the table: its body rises ~70% of the hand's first 6 cm, its lowest corner only ~45%.
STAYED_BEHIND = 0.3


class PickPlaceExpert(GraspGeometry, PlaceSpot, LayPlace, BowlNudge, Motion):
    """Waypoint state machine: approach, descend, grasp, lift, carry, lower, release, retreat."""

    PHASES = ("approach", "nudge", "descend", "grasp", "lift", "carry", "lower", "release", "retreat", "done")

    def __init__(
        self, env: LiberoEnv, step: Step | None = None, carry_height: float = 0.12, noise: float = 0.0, rng=None
    ):
        self.env, self.carry_height, self.noise = env, carry_height, noise
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.plan = parse_plan(env) if step is None else step
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
        self._spot_cache = None  # (body xy, bottom height) on the target, or False: none found
        self._lay = None  # whether the object is laid along a sloped target (decided at the first act)
        self._grasp_ori = None  # hand orientation the object was grasped with
        self._retreat_stage = 0
        self._nudge_dir = None  # set when every side of a bowl is overhung: slide it out first
        self._nudges_left = 1
        self._nudge_start = None
        self._aligned = False
        self._xy_int = np.zeros(2)
        self._grasps_left = 1

    def _open_cmd(self) -> float:
        """Gripper command while approaching: open, or (narrow grasp) close twice then hold."""
        if not self._narrow:
            return OPEN
        if self._preclose_frames < NARROW_PRECLOSE_FRAMES:
            self._preclose_frames += 1
            return CLOSE
        return HOLD

    def _spot(self) -> tuple[np.ndarray, float] | None:
        """Where the held object's body goes and its bottom's release height, chosen once it is held."""
        if self._spot_cache is None:
            se = self.env.sim_env
            target = self.plan.target
            if target in se.obj_body_id:  # On an object: over its body position (LIBERO allows 3 cm)
                foot_lo, foot_hi, _ = self._footprint()
                t = self._pos(target)
                top = max(t[2], self._eef()[0][2]) + 0.4
                _, _, z = self._height_map(t[:2] + foot_lo, t[:2] + foot_hi, top)
                self._spot_cache = (t[:2], float(np.max(z) + REST_CLEARANCE))
            else:
                self._spot_cache = self._choose_spot() or False
        return self._spot_cache or None

    def _target_xy(self) -> np.ndarray:
        spot = self._spot() if self.phase not in ("approach", "descend", "grasp") else None
        return spot[0] if spot is not None else self._pos(self.plan.target)[:2]

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
        """Where the eef goes so the held object's body lands on the chosen spot."""
        spot = self._spot()
        obj_lo, _ = self._obj_extent(self.plan.obj)
        obj_pos = self._pos(self.plan.obj)
        eef, _ = self._eef()
        if spot is None:
            xy, bottom = self._pos(self.plan.target)[:2], self._target_top() + 0.02
        else:
            xy, bottom = spot
        # Close the loop on the object's actual position (it can slip in the fingers).
        p = eef + np.array([xy[0] - obj_pos[0], xy[1] - obj_pos[1], 0.0])
        p[2] = eef[2] + (bottom - obj_lo[2])
        return p

    def _align_tol(self) -> float:
        """How close above the grasp point the eef must be in xy before closing in: tight when the object
        barely fits between the open fingers."""
        if "bowl" in self.plan.obj:
            return np.inf
        finger = self.target_ori[:, 1]
        lo, hi = self._obj_extent(self.plan.obj)
        se = self.env.sim_env
        root = se.obj_body_id[self.plan.obj]
        corners = self._local_box(self.plan.obj) @ se.sim.data.body_xmat[root].reshape(3, 3).T
        span = float(np.ptp(corners @ finger))
        return float(np.clip(0.5 * (OPEN_GAP - span), 0.002, 0.01))

    def _regrasp(self) -> None:
        """Start the pick over: the grasp is planned again from where the object is now."""
        self._grasps_left -= 1
        self._rim_dir, self._yaw, self._narrow, self._travel_z, self._carry_travel_z = None, None, False, None, None
        self._grasp_ori, self._aligned, self._preclose_frames = None, False, 0
        self._xy_int = np.zeros(2)
        self.target_ori = None
        self._next("approach")

    def act(self) -> np.ndarray:
        """Next 7-D action for the current sim state."""
        if self.target_ori is None:
            self._start_ori = self._eef()[1]
        if self._lay is None:
            self._lay = self._lay_axes() is not None
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
        if p == "approach" and self._nudge_dir is not None and self._nudges_left > 0:
            self._next("nudge")
            p = "nudge"
        if p == "nudge":
            a, finished = self._nudge_act()
            if finished:  # re-plan the grasp of the bowl where it is now
                self._nudges_left -= 1
                self._nudge_dir = self._nudge_start = None
                self._rim_dir, self._yaw, self._narrow, self._travel_z = None, None, False, None
                self.target_ori = None
                self._next("approach")
        elif p == "approach":
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
            tol = self._align_tol()
            if tol < 0.01:
                # A tight fit between the open fingers: line up above the object's top before going down, and
                # integrate the xy error (going down drags OSC's eef sideways by a few millimetres).
                self._xy_int = np.clip(self._xy_int + (g - eef)[:2], -0.4, 0.4)
                aim = g.copy()
                aim[:2] += 0.1 * self._xy_int
                if not self._aligned and np.linalg.norm(eef[:2] - g[:2]) > tol:
                    aim[2] = max(g[2], self._obj_extent(self.plan.obj)[1][2] + 0.03)
                else:
                    self._aligned = True
                a, err = self._servo(aim, self._open_cmd(), max_speed=0.3)
                err = float(np.linalg.norm(g - eef)) if self._aligned else np.inf
            else:
                # Full speed while well above the grasp point, slow for the last 5 cm.
                a, err = self._servo(g, self._open_cmd(), max_speed=1.0 if eef[2] - g[2] > 0.05 else 0.6)
            if err < 0.005 or err < 0.012 and self._stalled() or self.phase_steps > 25 + 15 * (tol < 0.01):
                self._next("grasp")
        elif p == "grasp":
            a, _ = self._servo(self._grasp_point(), CLOSE, max_speed=0.3)
            a[:3] = 0.0
            if self.phase_steps >= GRASP_FRAMES:
                self._next("lift")
        elif p == "lift":
            if self._grasp_ori is None:
                self._grasp_ori = self.target_ori
                self._lift_from = (eef[2], self._pos(self.plan.obj)[2])
            goal = np.array([eef[0], eef[1], self._carry_z()])
            a, err = self._servo(goal, CLOSE)
            rose = eef[2] - self._lift_from[0]
            if rose > 0.05 and self._pos(self.plan.obj)[2] - self._lift_from[1] < STAYED_BEHIND * rose:
                # The object stayed behind (slipped or was never between the fingers): grasp it again.
                a = np.zeros(7)
                a[6] = OPEN
                self._regrasp() if self._grasps_left > 0 else self._next("retreat")
                self.retreat_goal = eef + np.array([0.0, 0.0, 0.05])
            elif err < 0.02 or self.phase_steps > 30:
                if self._lay:
                    self.target_ori = self._lay_target()[1]
                self._next("carry")
        elif p == "carry" and self._lay:
            goal = self._lay_eef_goal(hover=True)
            goal[2] = max(goal[2], self._carry_z())
            a, _ = self._servo(goal, CLOSE)
            xy_err = np.linalg.norm((goal - eef)[:2])
            turned = self._rot_err() < 0.08
            if turned and (xy_err < 0.008 or xy_err < 0.02 and self._stalled()) or self.phase_steps > 60:
                self._next("lower")
        elif p == "lower" and self._lay:
            goal = self._lay_eef_goal(hover=False)
            a, err = self._servo(goal, CLOSE, max_speed=0.5)
            if err < 0.006 or err < 0.02 and self._stalled() or self.phase_steps > 30:
                self._next("release")
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
                if self._lay:  # back off the shelf along its normal
                    self.retreat_goal = eef + self._lay_axes()[1] * 0.06 + np.array([0.0, 0.0, 0.03])
                self._next("retreat")
        elif p == "retreat":
            a, err = self._servo(self.retreat_goal, OPEN)
            if self._lay and self._retreat_stage == 0 and (err < 0.02 or self.phase_steps > 15):
                # Off the shelf: turn back to pointing down (the next skill starts from there) while rising.
                self._retreat_stage, self.phase_steps = 1, 0
                self.target_ori = self._start_ori
                self.retreat_goal = eef + np.array([0.0, 0.0, 0.06])
            elif self._lay and self._retreat_stage == 1:
                if err < 0.02 and self._rot_err() < 0.1 or self.phase_steps > 25:
                    self._next("done")
            elif err < 0.02 or self.phase_steps > 15:
                self._next("done")
        else:
            a = np.zeros(7)
            a[6] = OPEN
        return a
