"""The knob skill: turn a stove on or off by pinching its knob's fin from above and turning the hand about the
knob's vertical axis until LIBERO's check holds; then let go and lift clear, pointing down."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from world_modality.sim.env import LiberoEnv

from .motion import Motion
from .planner import Step
from .poses import ScenePoses

OPEN, CLOSE = -1.0, 1.0
# LIBERO's FlatStove is on at knob qpos >= 0.5 and off below 0.0 (joint range -0.005 .. 2.1).
ON_GOAL = 0.9  # turned this far: on with margin, well short of the limit
OFF_GOAL = -0.001
TURN_LEAD = 0.35  # radians the hand's goal orientation runs ahead of the knob: a steady turn
PINCH_BELOW_TOP = 0.012  # eef this far below the fin's top: the finger pads hold its upper part
TRAVEL_CLEARANCE = 0.07  # the approach travels this far above everything between the eef and the knob
LIFT_CLEAR = 0.10  # the retreat ends this far above the fin's top
FIN_CLEAR = 0.03  # retreating: the hand turns back to its start orientation this far above the fin
XY_TOL = 0.008  # the hand goes down only while this close (metres) above the pinch point
GRASP_FRAMES, RELEASE_FRAMES = 7, 5
APPROACH_FRAMES, DESCEND_FRAMES, TURN_FRAMES, RETREAT_FRAMES = 70, 45, 60, 40
STALL_FRAMES = 10  # the knob turned less than 0.01 rad in this many frames: the turn is stuck


class KnobSkill(ScenePoses, Motion):
    """Waypoint state machine: approach (above the fin, fingers closing across its thin side), descend, grasp,
    turn (the hand's yaw leads the knob's angle), release, retreat (up, then back to pointing down)."""

    PHASES = ("approach", "descend", "grasp", "turn", "release", "retreat", "done")

    def __init__(self, env: LiberoEnv, step: Step, noise: float = 0.0, rng=None):
        if step.skill not in ("turn_on", "turn_off"):
            raise ValueError(f"KnobSkill runs turn_on/turn_off steps, got {step}.")
        self.env, self.step, self.plan, self.noise = env, step, step, noise
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.phase, self.phase_steps = "approach", 0
        self.target_ori = None
        self._box_cache: dict[str, np.ndarray] = {}
        self._eef_hist: list[np.ndarray] = []
        self._q_hist: list[float] = []
        se = env.sim_env
        m = se.sim.model
        hinges = [
            j
            for j in range(m.njnt)
            if m.jnt_type[j] == 3 and (m.body_id2name(int(m.jnt_bodyid[j])) or "").startswith(step.obj + "_")
        ]
        if len(hinges) != 1:
            raise ValueError(f"{step.obj!r} has {len(hinges)} hinge joints; a knob skill needs exactly one (its knob).")
        self._jid = hinges[0]
        self._qadr = int(m.jnt_qposadr[self._jid])
        self._body = int(m.jnt_bodyid[self._jid])
        self._fin = self._find_fin()
        self._sign = 1.0 if step.skill == "turn_on" else -1.0
        self._start_ori: np.ndarray | None = None
        self._grasp_ori: np.ndarray | None = None
        self._q0 = 0.0
        self._travel_z: float | None = None
        self._above = False
        self._retreat_goal: np.ndarray | None = None

    # --- geometry ---------------------------------------------------------------------------------------------
    def _q(self) -> float:
        return float(self.env.sim_env.sim.data.qpos[self._qadr])

    def _turned(self) -> bool:
        return self._q() >= ON_GOAL if self._sign > 0 else self._q() <= OFF_GOAL

    def _half(self, g: int) -> np.ndarray:
        """World-axis half extents of geom `g`'s box."""
        m, d = self.env.sim_env.sim.model, self.env.sim_env.sim.data
        return np.abs(d.geom_xmat[g].reshape(3, 3)) @ m.geom_size[g]

    def _find_fin(self) -> int:
        """The fin the fingers pinch: the knob's colliding geom that reaches highest."""
        m, d = self.env.sim_env.sim.model, self.env.sim_env.sim.data
        geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == self._body and m.geom_contype[g]]
        if not geoms:
            raise ValueError(f"{self.step.obj!r}: the knob body has no colliding geoms.")
        return max(geoms, key=lambda g: float(d.geom_xpos[g][2] + self._half(g)[2]))

    def _pinch_point(self) -> np.ndarray:
        p = np.array(self.env.sim_env.sim.data.geom_xpos[self._fin])
        p[2] += self._half(self._fin)[2] - PINCH_BELOW_TOP
        return p

    def _fin_top(self) -> float:
        return float(self.env.sim_env.sim.data.geom_xpos[self._fin][2] + self._half(self._fin)[2])

    def _pinch_ori(self) -> np.ndarray:
        """The start's pointing-down orientation turned about the vertical so the fingers close across the fin's
        thin horizontal side, the short way round (the fingers are symmetric)."""
        half = self._half(self._fin)
        thin = np.array([1.0, 0.0, 0.0]) if half[0] < half[1] else np.array([0.0, 1.0, 0.0])
        finger = self._start_ori[:, 1]
        yaw = np.arctan2(np.cross(finger, thin)[2], finger @ thin)
        if abs(yaw) > np.pi / 2:
            yaw -= np.sign(yaw) * np.pi
        return Rotation.from_rotvec([0.0, 0.0, yaw]).as_matrix() @ self._start_ori

    # --- phases -----------------------------------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """Next 7-D action for the current sim state."""
        if self._start_ori is None:
            self._start_ori = self._eef()[1]
            self._grasp_ori = self._pinch_ori()
            self.target_ori = self._grasp_ori
        self.phase_steps += 1
        eef, _ = self._eef()
        self._eef_hist.append(eef)
        self._q_hist.append(self._q())
        pinch = self._pinch_point()
        p = self.phase
        if p == "approach":
            # Rise first, travel level above everything on the way (pots on the stove included), then descend.
            if self._travel_z is None:
                top = self._corridor_top(eef, pinch)
                self._travel_z = max(eef[2] - 0.03, top + TRAVEL_CLEARANCE, pinch[2] + TRAVEL_CLEARANCE)
            z = self._travel_z
            self._above = self._above or bool(np.linalg.norm((pinch - eef)[:2]) < 0.01)
            goal = np.array([pinch[0], pinch[1], z]) if eef[2] > z - 0.03 else np.array([eef[0], eef[1], z])
            a, err = self._servo(goal, OPEN)
            over = np.linalg.norm((pinch - eef)[:2]) < XY_TOL
            if over and self._rot_err() < 0.08 and self._stalled(2, 0.004) or self.phase_steps > APPROACH_FRAMES:
                self._next("descend")
        elif p == "descend":
            # Down only while over the fin: near the robot's base the arm drifts sideways as it reaches down, and
            # a finger landing on the fin turns the knob before the grasp.
            goal = pinch if np.linalg.norm((pinch - eef)[:2]) < XY_TOL else np.array([pinch[0], pinch[1], eef[2]])
            a, err = self._servo(goal, OPEN, max_speed=0.6 if eef[2] - pinch[2] > 0.05 else 0.4)
            err = float(np.linalg.norm(pinch - eef))
            if err < 0.004 or err < 0.01 and self._stalled() or self.phase_steps > DESCEND_FRAMES:
                self._next("grasp")
        elif p == "grasp":
            a, _ = self._servo(pinch, CLOSE, max_speed=0.3)
            if self.phase_steps >= GRASP_FRAMES:
                self._q0 = self._q()
                self._next("turn")
        elif p == "turn":
            # The hand's goal yaw leads the knob's angle; the eef follows the fin round the knob's axis.
            lead = self._q() - self._q0 + self._sign * TURN_LEAD
            self.target_ori = Rotation.from_rotvec([0.0, 0.0, lead]).as_matrix() @ self._grasp_ori
            a, _ = self._servo(pinch, CLOSE, max_speed=0.5)
            if self._turned() or self._stuck() or self.phase_steps > TURN_FRAMES:
                self.target_ori = Rotation.from_rotvec([0.0, 0.0, self._q() - self._q0]).as_matrix() @ self._grasp_ori
                self._next("release")
        elif p == "release":
            a, _ = self._servo(eef, OPEN)
            a[:3] = 0.0
            if self.phase_steps >= RELEASE_FRAMES:
                self._retreat_goal = np.array([eef[0], eef[1], self._fin_top() + LIFT_CLEAR])
                self._next("retreat")
        elif p == "retreat":
            if eef[2] > self._fin_top() + FIN_CLEAR:  # turning back beside the fin would knock the knob
                self.target_ori = self._start_ori
            a, err = self._servo(self._retreat_goal, OPEN)
            settled = self._rot_err() < 0.1 or self._stalled(6, 0.002)
            if err < 0.02 and settled or self.phase_steps > RETREAT_FRAMES:
                self._next("done")
        else:
            a = np.zeros(7)
            a[6] = OPEN
        return a

    def _stuck(self) -> bool:
        h = self._q_hist
        n = STALL_FRAMES
        return self.phase_steps > n and len(h) > n and abs(h[-1] - h[-1 - n]) < 0.01

    def _next(self, phase: str) -> None:
        super()._next(phase)
        self._q_hist = []
