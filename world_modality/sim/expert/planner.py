"""Goal -> skills: the task's BDDL goal parsed into the steps the expert must take, in an order that can work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from world_modality.sim.env import LiberoEnv

# What each skill does to its step's `obj`:
#   place    pick `obj` and set it `relation` ('on' / 'in') `target`
#   push     slide `obj` (too flat to grasp) over the floor/table until it is `relation` `target`
#   open     pull the drawer / hinged door `obj` (a region or articulated object) open
#   close    push the drawer / hinged door `obj` shut
#   turn_on  turn the knob of `obj` (a stove) on
#   turn_off turn the knob of `obj` off
SKILLS = ("place", "push", "open", "close", "turn_on", "turn_off")

# Pots go onto a stove before its knob is turned, on or off (libero_10 tasks 2 and 8 hold both in their goals).
# The knob's state is the goal a later motion undoes most easily: a pot carried low past the stove's front edge
# can brush the knob back, while turning the knob last moves nothing near the pots. Flip it if the knob skill
# finds the pots in its way (its approach comes from above the stove's front).
PLACE_BEFORE_TURN_ON = True

# An object is pushed, not picked, when it is too thin to pinch from above and wider on both horizontal sides than
# the open gripper spans (plates: 1.7 cm thin, 13.7 cm wide); cream cheese and butter (1.8-1.9 cm thin, 4 cm wide)
# are still picked across their narrow side.
FLAT_HEIGHT = 0.025  # metres
GRIPPER_SPAN = 0.08  # metres, the open gripper's finger gap

PREDICATES = {"on": 2, "in": 2, "open": 1, "close": 1, "turnon": 1, "turnoff": 1}


@dataclass(frozen=True)
class Step:
    """One skill applied to one object; a task's plan is a list of them."""

    skill: str
    obj: str  # body, region or articulated object the skill acts on
    target: str = ""  # place / push: the object or region `obj` must end on / in
    relation: str = ""  # place / push: 'on' or 'in'

    def __post_init__(self):
        if self.skill not in SKILLS:
            raise ValueError(f"skill must be one of {SKILLS}, got {self.skill!r}.")
        if self.skill in ("place", "push") and (not self.target or self.relation not in ("on", "in")):
            raise ValueError(f"a {self.skill} step needs a target and relation 'on'/'in', got {self}.")


Plan = Step  # the single pick-and-place step the on/in skill is given


@dataclass(frozen=True)
class StartFacts:
    """What the planner needs from the start state (`start_facts` reads it from the simulator)."""

    openable: frozenset[str] = frozenset()  # drawer regions, doors and their owners: names with open/close joints
    open: frozenset[str] = frozenset()  # the openable ones open at the start
    hinged: frozenset[str] = frozenset()  # openable on hinge joints (doors); the others slide (drawers)
    flat: frozenset[str] = frozenset()  # objects pushed rather than picked (FLAT_HEIGHT, GRIPPER_SPAN)

    def __post_init__(self):
        for name in ("openable", "open", "hinged", "flat"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        stray = (self.open | self.hinged) - self.openable
        if stray:
            raise ValueError(f"open/hinged names must be openable, got {sorted(stray)} not in {sorted(self.openable)}.")

    def gate(self, region: str) -> str | None:
        """The drawer or door that must be open for something to go into `region`: the region itself when it
        opens (a drawer), else the longest openable name it is part of (microwave_1_heating_region ->
        microwave_1); None for a container always open (a basket)."""
        if region in self.openable:
            return region
        owners = [n for n in self.openable if region.startswith(n + "_")]
        return max(owners, key=len) if owners else None


def _normalise(goal: Sequence) -> list[tuple[str, ...]]:
    preds = []
    for pred in goal:
        if isinstance(pred, str) or not pred:
            raise ValueError(f"each goal predicate must be a sequence (name, args...), got {pred!r} in {goal!r}.")
        name, *args = (str(p) for p in pred)
        key = name.lower()
        if key not in PREDICATES:
            raise ValueError(
                f"goal predicate {name!r} in {list(pred)} is not one the expert plans for; "
                f"expected one of {sorted(PREDICATES)} (case-insensitive)."
            )
        if len(args) != PREDICATES[key]:
            raise ValueError(f"goal predicate {list(pred)} needs {PREDICATES[key]} argument(s), got {len(args)}.")
        preds.append((key, *args))
    if not preds:
        raise ValueError("the goal is empty; expected at least one predicate.")
    return preds


def _goal_steps(preds: list[tuple[str, ...]], facts: StartFacts) -> list[Step]:
    steps: list[Step] = []
    placed: dict[str, str] = {}
    states: dict[tuple[str, str], str] = {}  # (door/knob, name) -> the predicate asked of it
    for key, *args in preds:
        if key in ("on", "in"):
            obj, target = args
            if obj in placed and placed[obj] != target:
                raise ValueError(f"the goal puts {obj} on/in both {placed[obj]} and {target}; expected one place.")
            placed[obj] = target
            steps.append(Step("push" if obj in facts.flat else "place", obj, target, key))
            continue
        (obj,) = args
        if key in ("open", "close") and obj not in facts.openable:
            raise ValueError(
                f"goal ({key} {obj}): {obj} is not a drawer or door of this scene; openable: {sorted(facts.openable)}."
            )
        kind = "door" if key in ("open", "close") else "knob"
        if states.get((kind, obj), key) != key:
            raise ValueError(f"the goal asks both ({states[(kind, obj)]} {obj}) and ({key} {obj}).")
        states[(kind, obj)] = key
        steps.append(Step({"turnon": "turn_on", "turnoff": "turn_off"}.get(key, key), obj))
    return list(dict.fromkeys(steps))  # a predicate repeated in the goal is one step


def _inside(region: str, container: str, facts: StartFacts) -> bool:
    return region == container or region.startswith(container + "_") or facts.gate(region) == container


def _must_precede(a: Step, b: Step, facts: StartFacts) -> bool:
    """Whether step `a` has to be done before step `b`."""
    if a.skill == "open" and b.skill in ("place", "push") and b.relation == "in":
        return _inside(b.target, a.obj, facts)  # a drawer / door opens before anything goes in
    if a.skill in ("place", "push") and a.relation == "in" and b.skill == "close":
        return _inside(a.target, b.obj, facts)  # and closes after everything is in
    for knob, pot in ((a, b), (b, a)):  # a stove's knob and what goes onto the stove: PLACE_BEFORE_TURN_ON
        if knob.skill not in ("turn_on", "turn_off") or pot.skill not in ("place", "push"):
            continue
        if _inside(pot.target, knob.obj, facts):
            return (a is pot) == PLACE_BEFORE_TURN_ON
    return False


def plan_steps(goal: Sequence[Sequence[str]], facts: StartFacts) -> list[Step]:
    """The ordered steps that reach `goal`, BDDL predicates as `parsed_problem["goal_state"]` holds them
    (e.g. [['in', 'akita_black_bowl_1', 'wooden_cabinet_1_top_region']]), given the start `facts`.

    On/In -> place (push for a flat object); Open/Close -> open/close; Turnon/Turnoff -> turn_on/turn_off. A
    drawer or door closed at the start is opened before anything goes into it, a container is closed after
    everything that goes into it, pots on a stove and its knob follow PLACE_BEFORE_TURN_ON; otherwise steps keep
    the goal's order. Raises ValueError on a predicate it does not know or a goal that contradicts itself.
    """
    steps = _goal_steps(_normalise(goal), facts)
    for s in list(steps):
        gate = facts.gate(s.target) if s.skill in ("place", "push") and s.relation == "in" else None
        if gate is not None and gate not in facts.open and Step("open", gate) not in steps:
            steps.insert(steps.index(s), Step("open", gate))
    ordered: list[Step] = []
    todo = list(steps)
    while todo:  # stable topological sort: the first step in goal order whose prerequisites are all done
        ready = next((s for s in todo if not any(_must_precede(o, s, facts) for o in todo if o is not s)), None)
        if ready is None:
            raise ValueError(f"the goal {list(goal)} has steps that each need another first: {todo}.")
        ordered.append(ready)
        todo.remove(ready)
    return ordered


def start_facts(env: LiberoEnv) -> StartFacts:
    """The planner's facts about `env`'s current (start) state, read from the simulator."""
    from .poses import ScenePoses

    se = env.sim_env
    model = se.sim.model
    openable, opened, hinged = set(), set(), set()
    for name, state in se.object_states_dict.items():
        site = hasattr(state, "parent_name")
        owner = se.get_object(state.parent_name if site else name)
        joints = se.object_sites_dict[name].joints if site else owner.joints
        # Stoves have is_open too (their knob); what turns on is not a drawer or door.
        if not joints or not hasattr(owner, "is_open") or hasattr(owner, "turn_on"):
            continue
        openable.add(name)
        if state.is_open():
            opened.add(name)
        if all(model.jnt_type[model.joint_name2id(j)] == 3 for j in joints):  # mjJNT_HINGE
            hinged.add(name)

    class _Reader(ScenePoses):
        def __init__(self):
            self.env, self._box_cache = env, {}

    reader = _Reader()
    flat = set()
    for name in se.objects_dict:
        lo, hi = reader._obj_extent(name)
        size = hi - lo
        if size[2] < FLAT_HEIGHT and min(size[0], size[1]) > GRIPPER_SPAN:
            flat.add(name)
    return StartFacts(openable=openable, open=opened, hinged=hinged, flat=flat)


def parse_plan(env: LiberoEnv) -> Plan:
    """Pick-and-place plan from the single goal predicate (On/In obj target); else unsupported."""
    goal = env.sim_env.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("on", "in"):
        raise NotImplementedError(f"Scripted expert handles one On/In goal, got {goal} ({env.task_name}).")
    rel, obj, target = goal[0]
    return Step("place", obj=obj, target=target, relation=rel.lower())
