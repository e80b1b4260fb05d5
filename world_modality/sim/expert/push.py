"""The push skill: slide a flat object (too thin to pinch, e.g. a plate) over the table into a target region with
the closed gripper's fingers set low behind its rim, then lift clear."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from world_modality.sim.env import LiberoEnv

from .grasp import FINGER_TIP_BELOW_EEF, HAND_HALF_LENGTH, HAND_HALF_WIDTH, PALM_ABOVE_EEF
from .motion import APPROACH_CLEARANCE, Motion
from .planner import Step
from .poses import ScenePoses

OPEN, CLOSE = -1.0, 1.0
FINGER_HALF_DEPTH = 0.015  # closed fingers' half extent along the push, at any yaw (1.2 x 1.3 cm), metres
CLOSED_HALF = 0.013  # closed fingers' half extent along the closing axis
YAW_STEP = 15.0  # degrees between the hand yaws tried
# Degrees the palm may lean over the object, finger tips trailing, when the upright hand would meet something
# behind it; more tilt presses a plate's rim down and tips it up on its far side.
TILTS = (0.0, 12.0)
TIP_ABOVE_BOTTOM = 0.003  # finger tips this far above the object's bottom: off the table, below a plate's rim edge
SET_BACK = 0.015  # the descent ends this far behind the rim, so the fingers cannot land on it
PUSH_LEAD = 0.03  # the servo goal runs this far ahead of the contact point: a steady push
ENGAGE_SPEED = 0.2  # action units (of 1.0) until the fingers meet the object: a slow touch keeps them level
PUSH_SPEED = 0.35  # action units (of 1.0) while pushing: fast enough for the step limit, slow enough to steer
INSIDE_MARGIN = 0.4  # stop once the object's centre is inside the region shrunk by this share of its half size
REACHED = 0.008  # and its centre is this close to the last leg's end along the leg
BACK_OFF = 0.015  # fingers leave the rim before lifting, so the lift does not drag it
LIFT = 0.10  # the fingers end this far above the object's top
OPEN_ABOVE = 0.03  # the gripper opens once its tips are this far above the object's top
# Phase timeouts, in frames (expert decisions).
APPROACH_FRAMES, DESCEND_FRAMES, PUSH_FRAMES, BACK_FRAMES, RETREAT_FRAMES = 50, 30, 70, 6, 25
Z_GAIN = 60.0  # stiffer height servo while pushing (action units per metre): the fingers must stay low
CLEARANCE = 0.015  # the pushed object's edge keeps this far from other objects on its way
TURN_COST = 0.15  # metres of straight push a waypoint (lift, move round, descend again) is worth
PUSH_STALL_FRAMES = 8  # neither the fingers nor the object moved this many frames: the push is stuck


class PushSkill(ScenePoses, Motion):
    """Waypoint state machine over the object's planned legs (`_plan_legs`): per leg approach (rise, travel above
    the spot behind the object), descend, push (re-aimed every frame on the object's actual position), back off;
    after the last leg retreat (lift, open)."""

    PHASES = ("approach", "descend", "push", "back", "retreat", "done")

    def __init__(self, env: LiberoEnv, step: Step, noise: float = 0.0, rng=None):
        if step.skill != "push":
            raise ValueError(f"PushSkill runs push steps, got {step}.")
        self.env, self.step, self.plan, self.noise = env, step, step, noise
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.phase, self.phase_steps = "approach", 0
        self.target_ori = None
        self._box_cache: dict[str, np.ndarray] = {}
        self._verts: np.ndarray | None = None
        self._eef_hist: list[np.ndarray] = []
        self._obj_hist: list[np.ndarray] = []
        self._travel_z: float | None = None
        self._retreat_z: float | None = None
        self._legs: list[np.ndarray] | None = None
        self._leg = 0
        self._push_from: np.ndarray | None = None

    # --- geometry ---------------------------------------------------------------------------------------------
    def _region(self) -> tuple[np.ndarray, np.ndarray]:
        """World xy centre and half sizes of the target: a region site's box (what LIBERO's On/In test), else the
        target object's box."""
        se = self.env.sim_env
        name = self.step.target
        if name in se.object_sites_dict:
            size = np.asarray(se.object_sites_dict[name].size, dtype=np.float64)
            mat = np.asarray(se.sim.data.get_site_xmat(name)).reshape(3, 3)
            return np.array(se.sim.data.get_site_xpos(name))[:2], np.abs(mat @ size)[:2]
        lo, hi = self._obj_extent(name)
        return ((lo + hi) / 2)[:2], ((hi - lo) / 2)[:2]

    def _obj_xy(self) -> np.ndarray:
        """The object's body origin: the point LIBERO's region predicates test."""
        se = self.env.sim_env
        return np.array(se.sim.data.body_xpos[se.obj_body_id[self.step.obj]][:2])

    def _vertices(self) -> np.ndarray:
        """The object's geometry points (mesh vertices, box corners) in world coordinates."""
        se = self.env.sim_env
        sim, m = se.sim, se.sim.model
        root = se.obj_body_id[self.step.obj]
        rot_b, pos_b = sim.data.body_xmat[root].reshape(3, 3), sim.data.body_xpos[root]
        if self._verts is None:  # body-frame points, cached: objects are rigid
            bodies = {i for i in range(m.nbody) if (m.body_id2name(i) or "").startswith(self.step.obj)}
            geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies]
            visual = [g for g in geoms if m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0]
            signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
            pts = []
            for g in visual or geoms:
                mesh = m.geom_dataid[g]
                if m.geom_type[g] == 7 and mesh >= 0:
                    start = m.mesh_vertadr[mesh]
                    local = m.mesh_vert[start : start + m.mesh_vertnum[mesh]]
                else:
                    aabb = m.geom_aabb[g]
                    local = aabb[:3] + signs * aabb[3:]
                world = sim.data.geom_xpos[g] + local @ sim.data.geom_xmat[g].reshape(3, 3).T
                pts.append((world - pos_b) @ rot_b)
            self._verts = np.concatenate(pts)
        return pos_b + self._verts @ rot_b.T

    def _goal(self) -> np.ndarray:
        """Where the current leg takes the object's centre (the last leg's end lies in the region)."""
        if self._legs is None:
            self._legs = self._plan_legs()
        return self._legs[min(self._leg, len(self._legs) - 1)]

    def _plan_legs(self) -> list[np.ndarray]:
        """The object's path: one or two straight legs ending well inside the region, the object's edge kept
        CLEARANCE off every other object (or, where it starts closer, no closer than it starts), shortest with a
        waypoint costing TURN_COST; with no clear path, the one that comes least close."""
        se = self.env.sim_env
        c = self._obj_xy()
        v = self._vertices()
        radius = float(np.linalg.norm(v[:, :2] - c, axis=1).max())
        boxes = [self._obj_extent(n) for n in se.obj_body_id if n != self.step.obj]
        boxes = [(lo[:2], hi[:2]) for lo, hi in boxes]

        def gap(pts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            return np.linalg.norm(np.maximum(np.maximum(lo - pts, pts - hi), 0.0), axis=1)

        need = [min(radius + CLEARANCE, float(gap(c[None], lo, hi)[0]) - 0.002) for lo, hi in boxes]

        def worst(a: np.ndarray, b: np.ndarray) -> float:  # most the path cuts into a clearance (<= 0: clear)
            pts = a + np.linspace(0.0, 1.0, max(2, int(np.linalg.norm(b - a) / 0.01) + 1))[:, None] * (b - a)
            return max([0.0] + [float((n - gap(pts, lo, hi)).max()) for (lo, hi), n in zip(boxes, need)])

        centre, half = self._region()
        inner = half * (1 - INSIDE_MARGIN)
        grid = np.linspace(-1.0, 1.0, 5)
        goals = [centre + inner * np.array([gx, gy]) for gx in grid for gy in grid]
        span_lo = np.minimum(c, centre) - 0.15
        span_hi = np.maximum(c, centre) + 0.15
        ways = [
            np.array([x, y])
            for x in np.arange(span_lo[0], span_hi[0], 0.02)
            for y in np.arange(span_lo[1], span_hi[1], 0.02)
        ]
        best = None
        for g in goals:
            cand = [([g], float(np.linalg.norm(g - c) + 0.3 * np.linalg.norm(g - centre)), worst(c, g))]
            if cand[0][2] > 0:
                for w in ways:
                    bad = max(worst(c, w), worst(w, g))
                    length = np.linalg.norm(w - c) + np.linalg.norm(g - w) + 0.3 * np.linalg.norm(g - centre)
                    cand.append(([w, g], float(length + TURN_COST), bad))
            for legs, cost, bad in cand:
                key = (bad > 0, bad, cost)
                if best is None or key < best[0]:
                    best = (key, legs)
        return best[1]

    def _push_dir(self) -> np.ndarray:
        """Unit xy vector from the object's centre to the current leg's end."""
        d = self._goal() - self._obj_xy()
        return d / (np.linalg.norm(d) + 1e-9)

    def _contact(self, back: float = 0.0) -> np.ndarray:
        """Eef point behind the object on the line through its centre and the current leg's end, `back` further
        behind its far edge, the finger tips just off the table: a vertical finger there meets a plate's rim at
        its outer edge and pushes it level (a finger higher up slips over the rim; one leaning in tips it)."""
        d = self._push_dir()
        v = self._vertices()
        c = self._obj_xy()
        behind = float(((v[:, :2] - c) @ -d).max())  # the object's extent on the far side from the target
        p = np.zeros(3)
        p[:2] = c - d * (behind + FINGER_HALF_DEPTH + back)
        p[2] = float(v[:, 2].min()) + TIP_ABOVE_BOTTOM + FINGER_TIP_BELOW_EEF
        return p

    def _end_contact(self) -> np.ndarray:
        """Where the fingers stand once the object's centre is on the region's centre."""
        p = self._contact()
        p[:2] += self._goal() - self._obj_xy()
        return p

    def _hand_hits(self, eef: np.ndarray, ori: np.ndarray) -> int:
        """Sample points of the palm and the closed fingers, the gripper at `eef` with orientation `ori` (its z
        axis pointing down), that fall inside other objects' boxes (the pushed object excepted)."""
        local = [  # gripper frame: x across the palm, y the fingers' closing axis, z down the fingers
            (x, y, -h)
            for x in (-HAND_HALF_WIDTH, 0.0, HAND_HALF_WIDTH)
            for y in np.linspace(-HAND_HALF_LENGTH, HAND_HALF_LENGTH, 9)
            for h in (PALM_ABOVE_EEF, PALM_ABOVE_EEF + 0.04)
        ]
        local += [(x, y, z) for x in (-0.01, 0.01) for y in (-CLOSED_HALF, CLOSED_HALF) for z in (0.0, -0.03)]
        pts = eef + np.array(local) @ ori.T
        hits = 0
        for name in self.env.sim_env.obj_body_id:
            if name != self.step.obj:
                lo, hi = self._obj_extent(name)
                hits += int(np.all((pts >= lo) & (pts <= hi), axis=1).sum())
        return hits

    def _orientation(self) -> np.ndarray:
        """The hand's orientation for the whole push, chosen once: the start orientation turned by a yaw (the
        fingers' closing axis across the push is preferred: the palm's narrow side then leads), then tilted
        about the horizontal axis across the push so the palm leans over the object and the finger tips trail
        behind its rim. The least tilt whose palm and fingers meet no other object from the descent to the end
        of the push wins (objects can stand close behind a plate, e.g. a cabinet)."""
        start = self._start_ori
        finger = start[:, 1] * np.array([1.0, 1.0, 0.0])
        finger /= np.linalg.norm(finger) + 1e-9
        d = np.append(self._push_dir(), 0.0)
        across = np.array([-d[1], d[0], 0.0])
        a, b, c = self._contact(SET_BACK), self._contact(), self._end_contact()
        path = [a, a + np.array([0.0, 0.0, 0.05]), *(b + t * (c - b) for t in np.linspace(0.0, 1.0, 6))]
        tip_back = np.cross([0.0, 0.0, -1.0], -d)  # tilting about it moves the tips towards -d
        best = None
        for tilt in TILTS:
            lean = Rotation.from_rotvec(np.deg2rad(tilt) * tip_back).as_matrix()
            for k in range(-int(90 // YAW_STEP), int(90 // YAW_STEP)):
                yaw = np.deg2rad(k * YAW_STEP)
                turn = Rotation.from_rotvec([0.0, 0.0, yaw]).as_matrix()
                ori = lean @ turn @ start
                hits = sum(self._hand_hits(p, ori) for p in path)
                cost = (hits, TILTS.index(tilt), 1.0 - abs(float((turn @ finger) @ across)), abs(yaw))
                if best is None or cost < best[0]:
                    best = (cost, ori)
        return best[1]

    def _inside(self) -> bool:
        centre, half = self._region()
        return bool(np.all(np.abs(self._obj_xy() - centre) < half * (1 - INSIDE_MARGIN)))

    def _top(self) -> float:
        return float(self._vertices()[:, 2].max())

    # --- phases -----------------------------------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """Next 7-D action for the current sim state."""
        if self.target_ori is None:
            self._start_ori = self._eef()[1]
            self.target_ori = self._orientation()
        self.phase_steps += 1
        eef, _ = self._eef()
        self._eef_hist.append(eef)
        self._obj_hist.append(self._obj_xy())
        p = self.phase
        if p == "approach":
            start = self._contact(SET_BACK)
            if self._travel_z is None:  # fixed per leg: clear everything between the eef and the spot
                top = max(self._corridor_top(eef, start), self._top())
                self._travel_z = max(min(eef[2] - 0.03, top + 0.15), top + APPROACH_CLEARANCE)
            z = self._travel_z
            # Rise first, then travel level, as the place skill does.
            goal = np.array([start[0], start[1], z]) if eef[2] > z - 0.03 else np.array([eef[0], eef[1], z])
            a, _ = self._servo(goal, CLOSE)
            arrived = np.linalg.norm(eef[:2] - start[:2]) < 0.01 and abs(eef[2] - z) < 0.03 and self._rot_err() < 0.1
            if arrived or self.phase_steps > APPROACH_FRAMES:
                self._next("descend")
        elif p == "descend":
            goal = self._contact(SET_BACK)
            a, err = self._servo(goal, CLOSE, max_speed=1.0 if eef[2] - goal[2] > 0.05 else 0.5)
            if err < 0.006 or err < 0.015 and self._stalled() or self.phase_steps > DESCEND_FRAMES:
                self._next("push")
        elif p == "push":
            d = self._push_dir()
            goal = self._contact()
            if eef[2] > goal[2] + 0.015:  # still above the rim (a slow descent): get down behind it first
                goal = self._contact(SET_BACK)
            else:
                goal[:2] += d * PUSH_LEAD
            if self._push_from is None:
                self._push_from = self._obj_xy()
                self._leg_dir = d
            moving = np.linalg.norm(self._obj_xy() - self._push_from) > 0.005
            a, _ = self._servo(goal, CLOSE, max_speed=PUSH_SPEED if moving else ENGAGE_SPEED)
            a[2] = np.clip(Z_GAIN * (goal[2] - eef[2]), -1.0, 1.0)  # a rising finger slips over a plate's rim
            remaining = float((self._goal() - self._obj_xy()) @ self._leg_dir)  # along the leg: it can be passed
            last = self._leg >= len(self._legs) - 1
            arrived = self._inside() and remaining < REACHED if last else remaining < 0.01
            if arrived or self._stuck() or self.phase_steps > PUSH_FRAMES:
                self._back_goal = eef - np.append(d, 0.0) * BACK_OFF
                self._next("back")
        elif p == "back":
            a, err = self._servo(self._back_goal, CLOSE, max_speed=0.5)
            if err < 0.004 or self.phase_steps > BACK_FRAMES:
                if self._leg < len(self._legs) - 1:  # next leg: lift over the object, round to its new far side
                    self._leg += 1
                    self._travel_z, self._push_from = None, None
                    self.target_ori = self._orientation()
                    self._next("approach")
                else:
                    self._retreat_z = max(self._top() + LIFT + FINGER_TIP_BELOW_EEF, eef[2])
                    self._next("retreat")
        elif p == "retreat":
            goal = np.array([eef[0], eef[1], self._retreat_z])
            clear = eef[2] - FINGER_TIP_BELOW_EEF > self._top() + OPEN_ABOVE
            a, err = self._servo(goal, OPEN if clear else CLOSE)
            if err < 0.02 and clear or self.phase_steps > RETREAT_FRAMES:
                self._next("done")
        else:
            a = np.zeros(7)
            a[6] = OPEN
        return a

    def _stuck(self) -> bool:
        n = PUSH_STALL_FRAMES
        if len(self._obj_hist) <= n or self.phase_steps <= n:
            return False
        moved = float(np.linalg.norm(self._obj_hist[-1] - self._obj_hist[-1 - n]))
        return moved < 0.002 and self._stalled(n)

    def _next(self, phase: str) -> None:
        super()._next(phase)
        self._obj_hist = []
