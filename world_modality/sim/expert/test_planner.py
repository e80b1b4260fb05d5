"""The planner: every libero_goal / libero_10 goal (task order 0) becomes the ordered steps its task needs, from
the start facts alone; bad goals fail with errors that name them."""

import numpy as np
import pytest

from world_modality.sim.expert import planner
from world_modality.sim.expert.planner import StartFacts, Step, plan_steps

CABINET = ("wooden_cabinet_1", *(f"wooden_cabinet_1_{lvl}_region" for lvl in ("top", "middle", "bottom")))
WHITE = ("white_cabinet_1", *(f"white_cabinet_1_{lvl}_region" for lvl in ("top", "middle", "bottom")))
# Start facts as start_facts reads them (libero_goal: every drawer shut, the plate flat; libero_10 task 3: the
# bottom drawer open; task 9: the microwave door open).
GOAL_SCENE = StartFacts(openable=frozenset(CABINET), flat=frozenset({"plate_1"}))
BOWL_DRAWER = StartFacts(openable=frozenset(WHITE), open=frozenset({"white_cabinet_1", WHITE[3]}))
MICROWAVE = StartFacts(openable={"microwave_1"}, open={"microwave_1"}, hinged={"microwave_1"})
PLATES = StartFacts(flat={"plate_1", "plate_2"})
NONE = StartFacts()

BOWL, STOVE = "akita_black_bowl_1", "flat_stove_1"
BASKET = "basket_1_contain_region"

CASES = {
    ("libero_goal", 0): (GOAL_SCENE, [["open", CABINET[2]]], [Step("open", CABINET[2])]),
    ("libero_goal", 1): (
        GOAL_SCENE,
        [["on", BOWL, "flat_stove_1_cook_region"]],
        [Step("place", BOWL, "flat_stove_1_cook_region", "on")],
    ),
    ("libero_goal", 2): (
        GOAL_SCENE,
        [["on", "wine_bottle_1", "wooden_cabinet_1_top_side"]],
        [Step("place", "wine_bottle_1", "wooden_cabinet_1_top_side", "on")],
    ),
    ("libero_goal", 3): (  # only the In goal; its drawer is shut at the start
        GOAL_SCENE,
        [["in", BOWL, CABINET[1]]],
        [Step("open", CABINET[1]), Step("place", BOWL, CABINET[1], "in")],
    ),
    ("libero_goal", 4): (
        GOAL_SCENE,
        [["on", BOWL, "wooden_cabinet_1_top_side"]],
        [Step("place", BOWL, "wooden_cabinet_1_top_side", "on")],
    ),
    ("libero_goal", 5): (  # "push the plate to the front of the stove"
        GOAL_SCENE,
        [["on", "plate_1", "main_table_stove_front_region"]],
        [Step("push", "plate_1", "main_table_stove_front_region", "on")],
    ),
    ("libero_goal", 6): (
        GOAL_SCENE,
        [["on", "cream_cheese_1", BOWL]],
        [Step("place", "cream_cheese_1", BOWL, "on")],
    ),
    ("libero_goal", 7): (GOAL_SCENE, [["turnon", STOVE]], [Step("turn_on", STOVE)]),
    ("libero_goal", 8): (GOAL_SCENE, [["on", BOWL, "plate_1"]], [Step("place", BOWL, "plate_1", "on")]),
    ("libero_goal", 9): (
        GOAL_SCENE,
        [["on", "wine_bottle_1", "wine_rack_1_top_region"]],
        [Step("place", "wine_bottle_1", "wine_rack_1_top_region", "on")],
    ),
    ("libero_10", 0): (
        NONE,
        [["in", "alphabet_soup_1", BASKET], ["in", "tomato_sauce_1", BASKET]],
        [Step("place", "alphabet_soup_1", BASKET, "in"), Step("place", "tomato_sauce_1", BASKET, "in")],
    ),
    ("libero_10", 1): (  # cream cheese and butter are thin but narrow: picked, not pushed
        NONE,
        [["in", "cream_cheese_1", BASKET], ["in", "butter_1", BASKET]],
        [Step("place", "cream_cheese_1", BASKET, "in"), Step("place", "butter_1", BASKET, "in")],
    ),
    ("libero_10", 2): (
        NONE,
        [["turnon", STOVE], ["on", "moka_pot_1", "flat_stove_1_cook_region"]],
        [Step("place", "moka_pot_1", "flat_stove_1_cook_region", "on"), Step("turn_on", STOVE)],
    ),
    ("libero_10", 3): (  # Close comes first in the goal; the bowl goes in first, the drawer is already open
        BOWL_DRAWER,
        [["close", WHITE[3]], ["in", BOWL, WHITE[3]]],
        [Step("place", BOWL, WHITE[3], "in"), Step("close", WHITE[3])],
    ),
    ("libero_10", 4): (
        PLATES,
        [["on", "porcelain_mug_1", "plate_1"], ["on", "white_yellow_mug_1", "plate_2"]],
        [Step("place", "porcelain_mug_1", "plate_1", "on"), Step("place", "white_yellow_mug_1", "plate_2", "on")],
    ),
    ("libero_10", 5): (
        NONE,
        [["in", "black_book_1", "desk_caddy_1_back_contain_region"]],
        [Step("place", "black_book_1", "desk_caddy_1_back_contain_region", "in")],
    ),
    ("libero_10", 6): (
        StartFacts(flat={"plate_1"}),
        [["on", "porcelain_mug_1", "plate_1"], ["on", "chocolate_pudding_1", "living_room_table_plate_right_region"]],
        [
            Step("place", "porcelain_mug_1", "plate_1", "on"),
            Step("place", "chocolate_pudding_1", "living_room_table_plate_right_region", "on"),
        ],
    ),
    ("libero_10", 7): (
        NONE,
        [["in", "alphabet_soup_1", BASKET], ["in", "cream_cheese_1", BASKET]],
        [Step("place", "alphabet_soup_1", BASKET, "in"), Step("place", "cream_cheese_1", BASKET, "in")],
    ),
    ("libero_10", 8): (
        NONE,
        [
            ["on", "moka_pot_1", "flat_stove_1_cook_region"],
            ["on", "moka_pot_2", "flat_stove_1_cook_region"],
            ["turnon", STOVE],
        ],
        [
            Step("place", "moka_pot_1", "flat_stove_1_cook_region", "on"),
            Step("place", "moka_pot_2", "flat_stove_1_cook_region", "on"),
            Step("turn_on", STOVE),
        ],
    ),
    ("libero_10", 9): (
        MICROWAVE,
        [["in", "white_yellow_mug_1", "microwave_1_heating_region"], ["close", "microwave_1"]],
        [Step("place", "white_yellow_mug_1", "microwave_1_heating_region", "in"), Step("close", "microwave_1")],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: f"{c[0]}-{c[1]}")
def test_every_goal_of_libero_goal_and_libero_10_becomes_its_ordered_steps(case):
    facts, goal, expected = CASES[case]
    assert plan_steps(goal, facts) == expected
    # BDDL spells predicates capitalised; the parsed problem lower-cases them: both plan alike.
    assert plan_steps([[p[0].capitalize(), *p[1:]] for p in goal], facts) == expected


def test_all_twenty_tasks_are_covered():
    assert sorted(CASES) == [(s, t) for s in ("libero_10", "libero_goal") for t in range(10)]


def test_order_rules_hold_whatever_the_goal_order():
    # The microwave goal written the other way round, and with the door shut at the start: open, place, close.
    shut = StartFacts(openable={"microwave_1"}, hinged={"microwave_1"})
    goal = [["close", "microwave_1"], ["in", "mug_1", "microwave_1_heating_region"]]
    assert [s.skill for s in plan_steps(goal, shut)] == ["open", "place", "close"]
    assert plan_steps(goal, shut)[0] == Step("open", "microwave_1")
    # Two things into one shut drawer: it is opened once, before both.
    two = [["in", "a_1", CABINET[3]], ["in", "b_1", CABINET[3]], ["close", CABINET[3]]]
    assert [s.skill for s in plan_steps(two, GOAL_SCENE)] == ["open", "place", "place", "close"]
    # An Open goal for the drawer something goes into is that open step, kept before the place.
    both = [["in", BOWL, CABINET[1]], ["open", CABINET[1]]]
    assert plan_steps(both, GOAL_SCENE) == [Step("open", CABINET[1]), Step("place", BOWL, CABINET[1], "in")]
    # Something going onto another cabinet region than the drawer's needs no open step.
    assert [s.skill for s in plan_steps([["in", BOWL, "basket_1_contain_region"]], GOAL_SCENE)] == ["place"]


def test_the_stove_order_follows_its_constant(monkeypatch):
    goal = [["turnon", STOVE], ["on", "moka_pot_1", "flat_stove_1_cook_region"]]
    monkeypatch.setattr(planner, "PLACE_BEFORE_TURN_ON", False)
    assert [s.skill for s in plan_steps(goal, NONE)] == ["turn_on", "place"]
    goal = goal[::-1]
    assert [s.skill for s in plan_steps(goal, NONE)] == ["turn_on", "place"]
    monkeypatch.setattr(planner, "PLACE_BEFORE_TURN_ON", True)
    assert [s.skill for s in plan_steps(goal, NONE)] == ["place", "turn_on"]
    # A pot going elsewhere keeps the goal's order.
    assert [s.skill for s in plan_steps([["turnon", STOVE], ["on", "moka_pot_1", "plate_1"]], NONE)] == [
        "turn_on",
        "place",
    ]


@pytest.mark.parametrize(
    "goal, facts, match",
    [
        ([["stack", "a_1", "b_1"]], NONE, r"'stack'.*not one the expert plans for"),
        ([["on", "a_1"]], NONE, r"needs 2 argument"),
        ([["turnon", STOVE, "extra"]], NONE, r"needs 1 argument"),
        ([], NONE, r"goal is empty"),
        (["on a_1 b_1"], NONE, r"must be a sequence"),
        ([["open", "basket_1"]], GOAL_SCENE, r"basket_1 is not a drawer or door"),
        ([["open", CABINET[1]], ["close", CABINET[1]]], GOAL_SCENE, r"both \(open .*\(close"),
        ([["turnon", STOVE], ["turnoff", STOVE]], NONE, r"both \(turnon"),
        ([["on", "a_1", "b_1"], ["in", "a_1", "c_1"]], NONE, r"puts a_1 on/in both b_1 and c_1"),
    ],
)
def test_bad_goals_fail_naming_what_is_wrong(goal, facts, match):
    with pytest.raises(ValueError, match=match):
        plan_steps(goal, facts)


def test_facts_must_be_consistent_and_gates_find_their_door():
    with pytest.raises(ValueError, match="must be openable"):
        StartFacts(open={"microwave_1"})
    assert MICROWAVE.gate("microwave_1_heating_region") == "microwave_1"
    assert GOAL_SCENE.gate(CABINET[1]) == CABINET[1]  # the drawer region itself, not the whole cabinet
    assert GOAL_SCENE.gate("basket_1_contain_region") is None


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize(
    "suite, task, expected",
    [
        ("libero_goal", 5, GOAL_SCENE),
        ("libero_10", 3, BOWL_DRAWER),
        ("libero_10", 9, MICROWAVE),
    ],
)
def test_start_facts_read_from_the_simulator(suite, task, expected):
    from world_modality.sim.env import LiberoEnv
    from world_modality.sim.expert.planner import start_facts

    with LiberoEnv(suite, task, image_size=32) as env:
        env.reset(0, render=False, placement_seed=1000)
        assert start_facts(env) == expected


class _States(dict):
    def __missing__(self, name):
        return type("State", (), {"get_geom_state": lambda self: {"pos": [0.1, 0.2, 0.9]}})()


class _Env:
    """Just what TaskExpert reads when given its plan and facts: object positions."""

    sim_env = type("Sim", (), {"object_states_dict": _States()})()


def _fake_skill(frames: int, log: list):
    class Skill:
        def __init__(self, env, step, noise=0.0, rng=None):
            self.step, self.phase, self.n = step, "work", 0
            log.append(("built", step.skill))

        def act(self):
            self.n += 1
            if self.n >= frames:
                self.phase = "done"
            return np.full(7, float(len(log)))

    return Skill


def test_task_expert_runs_one_skill_per_step_and_names_step_and_phase(monkeypatch):
    from world_modality.sim.expert import task

    log = []
    monkeypatch.setattr(task, "skill_class", lambda kind: _fake_skill(2, log))
    plan = plan_steps([["in", BOWL, CABINET[1]]], GOAL_SCENE)
    expert = task.TaskExpert(_Env(), plan=plan, facts=GOAL_SCENE)
    phases = []
    for _ in range(6):
        phases.append(expert.phase)
        expert.act()
    assert phases == ["0:open:work", "0:open:work", "1:place:work", "1:place:work", "done", "done"]
    assert log == [("built", "open"), ("built", "place")]  # the next skill is built when the last is done
    assert expert.step == plan[-1] and expert.done and expert.index == 2
    assert len(expert.start_positions) == 2 and expert.start_positions[1][BOWL] == [0.1, 0.2, 0.9]
    np.testing.assert_array_equal(expert.act(), [0, 0, 0, 0, 0, 0, -1])
    assert task.split_phase("1:place:carry") == (1, "place", "carry")
    assert task.split_phase("done") == (None, "", "done") and task.split_phase("approach").name == "approach"
    with pytest.raises(ValueError, match="not '<step index>"):
        task.split_phase("x:carry")


def test_a_skill_not_written_yet_is_named(monkeypatch):
    from world_modality.sim.expert import task

    monkeypatch.setitem(task.SKILL_CLASSES, "door", ("no_such_door_module", "DoorSkill"))
    with pytest.raises(NotImplementedError, match=r"the door skill \(.*no_such_door_module.DoorSkill\)"):
        task.TaskExpert(_Env(), plan=[Step("close", "microwave_1")], facts=MICROWAVE)
    assert task.skill_kind(Step("open", CABINET[1]), GOAL_SCENE) == "drawer"
    assert task.skill_kind(Step("close", "microwave_1"), MICROWAVE) == "door"


def test_annotations_name_each_step_and_keep_single_place_texts():
    from world_modality.sim.annotate import annotate

    pos = {BOWL: [0.0, 0.1, 0.9], "plate_1": [0.0, 0.0, 0.9]}
    old = {"object": BOWL, "target": "plate_1", "relation": "on", "positions": pos}  # recorded before plans
    step = {"skill": "place", "obj": BOWL, "target": "plate_1", "relation": "on", "positions": pos}
    single = {**old, "steps": [step]}
    texts = annotate(["0:place:approach", "0:place:retreat", "done"], single)
    assert texts == annotate(["approach", "retreat", "done"], old)
    assert texts == [
        "The black bowl is left of the plate; the arm moves above it so the gripper can reach it.",
        "The black bowl is on the plate; the arm moves away and the task is done.",
        "The black bowl is on the plate; the task is done.",
    ]
    drawer = {"skill": "open", "obj": CABINET[1], "target": "", "relation": "", "positions": {}}
    place = {**step, "target": CABINET[1], "relation": "in", "positions": {**pos, CABINET[1]: [0.1, 0.1, 0.9]}}
    texts = annotate(["0:open:pull", "0:open:done", "1:place:carry", "1:place:retreat"], {"steps": [drawer, place]})
    assert texts == [
        "The top drawer of the wooden cabinet is closed; the arm pulls it open so the black bowl can go in.",
        "The top drawer of the wooden cabinet is open; the arm moves on to put the black bowl in the top drawer of "
        "the wooden cabinet.",
        "The black bowl is held high; the arm carries it over the top drawer of the wooden cabinet.",
        "The black bowl is in the top drawer of the wooden cabinet; the arm moves away and the task is done.",
    ]


def test_the_episode_loop_ends_soon_after_the_last_step_when_the_goal_never_holds(monkeypatch):
    from world_modality.sim.expert import task
    from world_modality.sim.record import DONE_GRACE_FRAMES, run_expert

    class Unsolved(_Env):
        t = 0

        def step(self, action, render=False):
            self.t += 1
            return None, self.t >= 1000, False, {"t": self.t}

    monkeypatch.setattr(task, "skill_class", lambda kind: _fake_skill(3, []))
    env = Unsolved()
    expert = task.TaskExpert(env, plan=[Step("turn_on", STOVE)], facts=NONE)
    success, steps, frames = run_expert(env, expert, control_steps_per_frame=2)
    assert not success and frames == 3 + DONE_GRACE_FRAMES and steps == 2 * frames
