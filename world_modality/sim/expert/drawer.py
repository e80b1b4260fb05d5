"""The drawer skill: open a cabinet drawer by grasping its handle bar from the front and pulling it along the slide,
or close one by pushing its handle bar shut with the closed fingers; then let go and lift clear, pointing down."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from world_modality.sim.env import LiberoEnv

from .motion import Motion
from .planner import Step
from .poses import ScenePoses

OPEN, CLOSE = -1.0, 1.0
# LIBERO's cabinets count a drawer open below -0.14 and closed above 0.0 (slide range -0.16 .. 0.01).
OPEN_GOAL = -0.152  # pulled this far: open with margin, short of the joint limit
CLOSE_GOAL = 0.004  # pushed this far in: closed with margin, short of the limit
PRE_GRASP = 0.09  # the open gripper waits this far in front of the handle before moving in
GRASP_DEPTH = 0.0  # eef on the bar's centre: the pads (1.7 cm) wrap its 1.5 cm depth, the tips clear the front
PULL_LEAD = 0.03  # the servo goal runs this far ahead along the slide: a steady pull / push
PULL_SPEED = 0.6
FINGER_HALF_DEPTH = 0.0125  # closed fingers' half extent across the closing axis, metres
PUSH_TILT = 30.0  # degrees the pointing-down hand leans into the push (upright, the elbow struck the cabinet top)
TIP_ABOVE_BAR = 0.004  # pushing: eef this far above the bar's centre (the finger tips reach ~1.1 cm below it)
BACK_OFF = 0.07  # after letting go the hand backs away from the handle along the slide
TRAVEL_CLEARANCE = 0.05  # the approach travels this far above the cabinet's top
LIFT_CLEAR = 0.12  # the retreat ends this far above the cabinet's top
HANDLE_CLEAR = 0.05  # retreating: the hand turns back upright (and a pushing hand opens) this far above the handle
GRASP_FRAMES, RELEASE_FRAMES = 7, 5
APPROACH_FRAMES, INSERT_FRAMES, PULL_FRAMES, BACK_FRAMES, RETREAT_FRAMES = 60, 25, 70, 20, 40
STALL_FRAMES = 8  # the drawer moved less than 2 mm in this many frames: the pull / push is stuck


class DrawerSkill(ScenePoses, Motion):
    """Waypoint state machine. Open: approach (turn the hand to point into the cabinet, fingers closing
    vertically, in front of the handle), insert, grasp, pull, release, back, retreat. Close: approach (pointing
    down, closed fingers in front of the handle bar), push, back, retreat."""

    PHASES = ("approach", "insert", "grasp", "pull", "push", "release", "back", "retreat", "done")

    def __init__(self, env: LiberoEnv, step: Step, noise: float = 0.0, rng=None):
        if step.skill not in ("open", "close"):
            raise ValueError(f"DrawerSkill runs open/close steps, got {step}.")
        self.env, self.step, self.plan, self.noise = env, step, step, noise
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.phase, self.phase_steps = "approach", 0
        self.target_ori = None
        self._box_cache: dict[str, np.ndarray] = {}
        self._eef_hist: list[np.ndarray] = []
        self._q_hist: list[float] = []
        se = env.sim_env
        if step.obj not in se.object_sites_dict or not getattr(se.object_sites_dict[step.obj], "joints", None):
            raise ValueError(f"{step.obj!r} is not a drawer region with a slide joint.")
        site = se.object_sites_dict[step.obj]
        self.cabinet = site.parent_name
        m = se.sim.model
        (joint,) = site.joints
        self._jid = m.joint_name2id(joint)
        if m.jnt_type[self._jid] != 2:  # mjJNT_SLIDE
            raise ValueError(f"{step.obj!r}: joint {joint!r} is not a slide joint.")
        self._qadr = int(m.jnt_qposadr[self._jid])
        self._body = int(m.jnt_bodyid[self._jid])
        self._bar = self._find_bar()
        self._goal_ori: np.ndarray | None = None
        self._grip_offset = np.zeros(3)  # eef minus handle once grasped
        self._back_goal: np.ndarray | None = None
        self._travel_z: float | None = None
        self._above = False  # over the spot in front of the handle: descending
        self._retreat_goal: np.ndarray | None = None
        self._start_ori: np.ndarray | None = None

    # --- geometry ---------------------------------------------------------------------------------------------
    def _q(self) -> float:
        return float(self.env.sim_env.sim.data.qpos[self._qadr])

    def _out(self) -> np.ndarray:
        """Unit world vector the drawer moves along when opening (qpos decreasing)."""
        d = self.env.sim_env.sim.data
        axis = d.xmat[self._body].reshape(3, 3) @ self.env.sim_env.sim.model.jnt_axis[self._jid]
        return -axis / np.linalg.norm(axis)

    def _find_bar(self) -> int:
        """The handle bar: the drawer's colliding geom that stands farthest out along the slide."""
        m, d = self.env.sim_env.sim.model, self.env.sim_env.sim.data
        out = self._out()
        geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == self._body and m.geom_contype[g]]
        if not geoms:
            raise ValueError(f"{self.step.obj!r}: the drawer body has no colliding geoms.")
        return max(geoms, key=lambda g: float(d.geom_xpos[g] @ out))

    def _handle(self) -> np.ndarray:
        return np.array(self.env.sim_env.sim.data.geom_xpos[self._bar])

    def _bar_half_depth(self) -> float:
        m, d = self.env.sim_env.sim.model, self.env.sim_env.sim.data
        half = np.abs(d.geom_xmat[self._bar].reshape(3, 3)) @ m.geom_size[self._bar]
        return float(half @ np.abs(self._out()))

    def _cabinet_top(self) -> float:
        return float(self._obj_extent(self.cabinet)[1][2])

    def _open_ori(self) -> np.ndarray:
        """Hand pointing into the cabinet (against the slide), fingers closing vertically: of the two such
        orientations, the one nearer the start's."""
        point = -self._out()
        best = None
        for up in (np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0])):
            r = np.column_stack([np.cross(up, point), up, point])
            angle = np.linalg.norm(Rotation.from_matrix(r @ self._start_ori.T).as_rotvec())
            if best is None or angle < best[0]:
                best = (angle, r)
        return best[1]

    def _close_ori(self) -> np.ndarray:
        """Pointing down, fingers closing across the slide (the palm's thin side faces the drawer)."""
        finger = self._start_ori[:, 1]
        out = self._out()
        across = np.cross([0.0, 0.0, 1.0], out)
        yaw = np.arctan2(np.cross(finger, across)[2], finger @ across)
        if abs(yaw) > np.pi / 2:  # the fingers are symmetric: turn the short way
            yaw -= np.sign(yaw) * np.pi
        down = Rotation.from_rotvec([0.0, 0.0, yaw]).as_matrix() @ self._start_ori
        for sign in (1.0, -1.0):  # lean the finger tips towards the cabinet: the wrist and elbow stay back
            r = Rotation.from_rotvec(sign * np.deg2rad(PUSH_TILT) * across).as_matrix() @ down
            if r[:, 2] @ out < 0:
                return r
        raise AssertionError("one of the two leans points into the cabinet")

    # --- phases -----------------------------------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """Next 7-D action for the current sim state."""
        if self._start_ori is None:
            self._start_ori = self._eef()[1]
            self._goal_ori = self._open_ori() if self.step.skill == "open" else self._close_ori()
            self.target_ori = self._goal_ori
        self.phase_steps += 1
        eef, _ = self._eef()
        self._eef_hist.append(eef)
        self._q_hist.append(self._q())
        out = self._out()
        h = self._handle()
        opening = self.step.skill == "open"
        grip = OPEN if opening else CLOSE
        p = self.phase
        if p == "approach":
            if opening:
                goal = h + out * PRE_GRASP
            else:
                goal = h + out * (self._bar_half_depth() + FINGER_HALF_DEPTH + 0.03)
                goal[2] += TIP_ABOVE_BAR
            # Rise above the cabinet first, travel level (at a height fixed once: following the eef's own height
            # let it ratchet upwards), then descend in front of the handle.
            if self._travel_z is None:
                self._travel_z = max(self._cabinet_top() + TRAVEL_CLEARANCE, goal[2])
            z = self._travel_z
            self._above = self._above or bool(np.linalg.norm((goal - eef)[:2]) < 0.02)
            if not self._above:
                goal = np.array([goal[0], goal[1], z]) if eef[2] > z - 0.03 else np.array([eef[0], eef[1], z])
            a, err = self._servo(goal, grip)
            if self._above and err < 0.01 and self._rot_err() < 0.08 or self.phase_steps > APPROACH_FRAMES:
                self._next("insert" if opening else "push")
        elif p == "insert":
            a, err = self._servo(h + out * GRASP_DEPTH, OPEN, max_speed=0.5)
            if err < 0.005 or err < 0.012 and self._stalled() or self.phase_steps > INSERT_FRAMES:
                self._next("grasp")
        elif p == "grasp":
            a, _ = self._servo(h + out * GRASP_DEPTH, CLOSE, max_speed=0.3)
            if self.phase_steps >= GRASP_FRAMES:
                self._grip_offset = eef - h
                self._next("pull")
        elif p == "pull":
            goal = h + self._grip_offset + out * PULL_LEAD
            a, _ = self._servo(goal, CLOSE, max_speed=PULL_SPEED)
            if self._q() < OPEN_GOAL or self._stuck() or self.phase_steps > PULL_FRAMES:
                self._next("release")
        elif p == "push":
            goal = h + out * (self._bar_half_depth() + FINGER_HALF_DEPTH - PULL_LEAD)
            goal[2] += TIP_ABOVE_BAR
            a, _ = self._servo(goal, CLOSE, max_speed=PULL_SPEED)
            if self._q() > CLOSE_GOAL or self._stuck() or self.phase_steps > PULL_FRAMES:
                self._next("back")
        elif p == "release":
            a, _ = self._servo(eef, OPEN)
            a[:3] = 0.0
            if self.phase_steps >= RELEASE_FRAMES:
                self._next("back")
        elif p == "back":
            if self._back_goal is None:
                self._back_goal = eef + out * BACK_OFF
            a, err = self._servo(self._back_goal, OPEN if opening else CLOSE, max_speed=0.5)
            if err < 0.01 or self.phase_steps > BACK_FRAMES:
                self._retreat_goal = np.array([eef[0], eef[1], max(self._cabinet_top() + LIFT_CLEAR, eef[2])])
                self._next("retreat")
        elif p == "retreat":
            # Turning the hand back and opening the fingers beside the handle caught it and pulled a shut drawer
            # out again: both wait until the fingers are above the handle.
            clear = eef[2] > h[2] + HANDLE_CLEAR
            if clear:
                self.target_ori = self._start_ori  # hand the next skill the pointing-down start orientation
            a, err = self._servo(self._retreat_goal, OPEN if clear or opening else CLOSE)
            # Turning back from pointing sideways can end a few degrees short, at the wrist's joint limit.
            settled = self._rot_err() < 0.1 or self._stalled(6, 0.002)
            if err < 0.025 and settled or self.phase_steps > RETREAT_FRAMES:
                self._next("done")
        else:
            a = np.zeros(7)
            a[6] = OPEN
        return a

    def _stuck(self) -> bool:
        h = self._q_hist
        n = STALL_FRAMES
        return self.phase_steps > n and len(h) > n and abs(h[-1] - h[-1 - n]) < 0.002

    def _next(self, phase: str) -> None:
        super()._next(phase)
        self._q_hist = []
