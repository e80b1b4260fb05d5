"""The hinged-door skill: close an open door (a microwave's) by pushing its panel round the hinge with the closed
fingers, from the side the panel swings towards; then back off and lift clear, pointing down. Opening a door is
not written yet and says so."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from world_modality.sim.env import LiberoEnv

from .motion import Motion
from .planner import Step
from .poses import ScenePoses

CLOSE = 1.0
OPEN = -1.0
CLOSED_GOAL = -0.003  # LIBERO's microwave is closed above qpos -0.005 (range -2.09 .. 0: closing raises it)
PUSH_RADIUS = 0.7  # the fingers push the panel this far along it from the hinge (a fraction of its length)
FINGER_HALF_DEPTH = 0.0125  # closed fingers' half extent across the closing axis, metres
STANDOFF = 0.06  # the descent stops this far off the panel (at 0.03 it landed on a door swung wide open)
PUSH_LEAD = 0.25  # radians the push's goal runs ahead of the panel round the hinge
PUSH_SPEED = 0.5
TRAVEL_CLEARANCE = 0.05  # travel this far above the door's top edge
BACK_OFF = 0.06  # after the push the hand backs away from the closed door along its outward normal
LIFT_CLEAR = 0.08  # the retreat ends this far above the door's top edge
APPROACH_FRAMES, PUSH_FRAMES, BACK_FRAMES, RETREAT_FRAMES = 70, 80, 20, 40
STALL_FRAMES = 10  # the door turned less than 0.01 rad in this many frames: the push is stuck


class DoorSkill(ScenePoses, Motion):
    """Waypoint state machine (close): approach (over, then down beside the open panel's swing side, fingers
    closed, pointing down), push (the goal leads the panel round the hinge), back, retreat."""

    PHASES = ("approach", "push", "back", "retreat", "done")

    def __init__(self, env: LiberoEnv, step: Step, noise: float = 0.0, rng=None):
        if step.skill not in ("open", "close"):
            raise ValueError(f"DoorSkill runs open/close steps, got {step}.")
        if step.skill == "open":
            raise NotImplementedError(f"opening a hinged door ({step.obj!r}) is not implemented; closing is.")
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
            raise ValueError(f"{step.obj!r} has {len(hinges)} hinge joints; the door skill needs exactly one.")
        self._jid = hinges[0]
        self._qadr = int(m.jnt_qposadr[self._jid])
        self._body = int(m.jnt_bodyid[self._jid])
        self._panel = self._find_panel()
        self._travel_z: float | None = None
        self._above = False
        self._back_goal: np.ndarray | None = None
        self._retreat_goal: np.ndarray | None = None

    # --- geometry ---------------------------------------------------------------------------------------------
    def _q(self) -> float:
        return float(self.env.sim_env.sim.data.qpos[self._qadr])

    def _half(self, g: int) -> np.ndarray:
        m, d = self.env.sim_env.sim.model, self.env.sim_env.sim.data
        return np.abs(d.geom_xmat[g].reshape(3, 3)) @ m.geom_size[g]

    def _find_panel(self) -> int:
        """The door panel: the door body's largest colliding box."""
        m = self.env.sim_env.sim.model
        boxes = [
            g
            for g in range(m.ngeom)
            if m.geom_bodyid[g] == self._body and m.geom_type[g] == 6 and (m.geom_contype[g] or m.geom_conaffinity[g])
        ]
        if not boxes:
            raise ValueError(f"{self.step.obj!r}: the door body has no colliding box (its panel).")
        return max(boxes, key=lambda g: float(np.prod(m.geom_size[g])))

    def _hinge(self) -> tuple[np.ndarray, np.ndarray]:
        """(anchor, unit axis oriented so that closing turns the door positively about it)."""
        d, m = self.env.sim_env.sim.data, self.env.sim_env.sim.model
        axis = np.array(d.xaxis[self._jid])
        lo, hi = m.jnt_range[self._jid]
        closing = 1.0 if abs(hi) < abs(lo) else -1.0  # closed is the range end nearest 0
        return np.array(d.xanchor[self._jid]), closing * axis / np.linalg.norm(axis)

    def _panel_frame(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(unit vector from the hinge along the panel, horizontal; unit direction the panel moves when closing;
        panel length from the hinge; half thickness of the panel)."""
        anchor, axis = self._hinge()
        centre = np.array(self.env.sim_env.sim.data.geom_xpos[self._panel])
        along = centre - anchor
        along[2] = 0.0
        length = 2.0 * float(np.linalg.norm(along))
        along /= np.linalg.norm(along)
        moving = np.cross(axis, along)
        moving[2] = 0.0
        moving /= np.linalg.norm(moving)
        m, d = self.env.sim_env.sim.model, self.env.sim_env.sim.data
        rot = d.geom_xmat[self._panel].reshape(3, 3)
        return along, moving, length, float(np.abs(rot.T @ moving) @ m.geom_size[self._panel])

    def _contact_point(self, lead: float, depth: float) -> np.ndarray:
        """Eef goal: the point PUSH_RADIUS along the panel turned `lead` further round the hinge, `depth` metres
        off its swing-side face (negative: into where the panel is), at the panel's mid height."""
        anchor, axis = self._hinge()
        along, moving, length, thick = self._panel_frame()
        turn = Rotation.from_rotvec(axis * lead).as_matrix()
        along, moving = turn @ along, turn @ moving
        centre_z = float(self.env.sim_env.sim.data.geom_xpos[self._panel][2])
        p = anchor + along * PUSH_RADIUS * length - moving * (thick + FINGER_HALF_DEPTH + depth)
        p[2] = centre_z
        return p

    def _door_top(self) -> float:
        d = self.env.sim_env.sim.data
        return float(d.geom_xpos[self._panel][2] + self._half(self._panel)[2])

    # --- phases -----------------------------------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """Next 7-D action for the current sim state."""
        if self.target_ori is None:
            self.target_ori = self._eef()[1]  # pointing down, as the previous skill left the hand
        self.phase_steps += 1
        eef, _ = self._eef()
        self._eef_hist.append(eef)
        self._q_hist.append(self._q())
        p = self.phase
        if p == "approach":
            goal = self._contact_point(0.0, STANDOFF)
            if self._travel_z is None:
                self._travel_z = max(eef[2], self._door_top() + TRAVEL_CLEARANCE, self._corridor_top(eef, goal) + 0.05)
            self._above = self._above or bool(np.linalg.norm((goal - eef)[:2]) < 0.01)
            if not self._above:
                z = self._travel_z
                goal = np.array([goal[0], goal[1], z]) if eef[2] > z - 0.03 else np.array([eef[0], eef[1], z])
            a, err = self._servo(goal, CLOSE)
            if self._above and err < 0.01 or self.phase_steps > APPROACH_FRAMES:
                self._next("push")
        elif p == "push":
            a, _ = self._servo(self._contact_point(PUSH_LEAD, -0.01), CLOSE, max_speed=PUSH_SPEED)
            if self._q() > CLOSED_GOAL or self._stuck() or self.phase_steps > PUSH_FRAMES:
                _, moving, _, _ = self._panel_frame()
                self._back_goal = eef - moving * BACK_OFF
                self._next("back")
        elif p == "back":
            a, err = self._servo(self._back_goal, CLOSE, max_speed=0.5)
            if err < 0.01 or self.phase_steps > BACK_FRAMES:
                self._retreat_goal = np.array([eef[0], eef[1], max(eef[2], self._door_top() + LIFT_CLEAR)])
                self._next("retreat")
        elif p == "retreat":
            a, err = self._servo(self._retreat_goal, OPEN)
            if err < 0.02 or self.phase_steps > RETREAT_FRAMES:
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
