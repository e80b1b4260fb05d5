"""Chain-of-causation annotations from the expert's phases and the scene: one short text per frame,
saying what the arm does next and why, in the JSONL format E4's `--coc_jsonl` reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from .expert.task import split_phase

PHASE_TEXT = {
    "approach": "The {obj} is {where}; the arm moves above it so the gripper can reach it.",
    "descend": "The open gripper is above the {obj}; it lowers around it so the fingers can close on it.",
    "grasp": "The fingers surround the {obj}; closing them grasps it.",
    "lift": "The {obj} is grasped; lifting it clears the table before moving.",
    "carry": "The {obj} is held high; the arm carries it over the {target}.",
    "lower": "The {obj} is above the {target}; lowering it sets it {relation} the {target}.",
    "release": "The {obj} rests {relation} the {target}; opening the fingers lets it go.",
    "retreat": "The {obj} is {relation} the {target}; the arm moves away and the task is done.",
    "done": "The {obj} is {relation} the {target}; the task is done.",
}
# A place step with more steps after it ends by moving on rather than with the task done.
PLACE_THEN_TEXT = "The {obj} is {relation} the {target}; the arm moves on to {next}."
FINISHED_PHASES = ("retreat", "done")
# The other skills: (while it works, once its job holds); their own phase names are not spelled out.
SKILL_TEXT = {
    "push": (
        "The {obj} is too flat to grasp and lies {where}; the arm pushes it across the table to the {target}.",
        "The {obj} is at the {target}; {then}",
    ),
    "open": ("The {obj} is closed; the arm pulls it open{purpose}.", "The {obj} is open; {then}"),
    "close": ("The {obj} is open; the arm pushes it shut.", "The {obj} is closed; {then}"),
    "turn_on": ("The {obj} is off; the arm turns its knob to switch it on.", "The {obj} is on; {then}"),
    "turn_off": ("The {obj} is on; the arm turns its knob to switch it off.", "The {obj} is off; {then}"),
}
DOING = {
    "place": "put the {obj} {relation} the {target}",
    "push": "push the {obj} to the {target}",
    "open": "open the {obj}",
    "close": "close the {obj}",
    "turn_on": "turn on the {obj}",
    "turn_off": "turn off the {obj}",
}


def object_words(name: str) -> str:
    """'akita_black_bowl_1' -> 'black bowl'; 'basket_1_contain_region' -> 'basket';
    'wooden_cabinet_1_top_region' -> 'top drawer of the wooden cabinet'; 'main_table_stove_front_region' ->
    'stove front area'."""
    drawer = re.fullmatch(r"(.+cabinet)_\d+_(top|middle|bottom)_region", name)
    if drawer:
        return f"{drawer.group(2)} drawer of the {object_words(drawer.group(1))}"
    part = re.fullmatch(r"(.+)_\d+_(back|front|left|right)_contain_region", name)
    if part:
        return f"{part.group(2)} compartment of the {object_words(part.group(1))}"
    area = re.fullmatch(r"(?:\w+_)?table_(.+)_region", name)
    if area:
        return f"{area.group(1).replace('_', ' ')} area"
    name = re.sub(r"_\d+(_.*)?$", "", name)
    words = [w for w in name.split("_") if w not in ("akita", "region", "contain", "flat")]
    return " ".join(words) or name


def relative_place(obj_xy, target_xy) -> str:
    """Where the object stands relative to the target, in the agent view's words (x away, y left)."""
    dx, dy = obj_xy[0] - target_xy[0], obj_xy[1] - target_xy[1]
    if abs(dx) < 0.03 and abs(dy) < 0.03:
        return "next to the {target}"
    side = ("left of" if dy > 0 else "right of") if abs(dy) >= abs(dx) else ("behind" if dx < 0 else "in front of")
    return f"{side} the {{target}}"


def scene_steps(scene: dict) -> list[dict]:
    """The plan's steps (skill, obj, target, relation, positions) a scene records; a scene recorded before plans
    had several steps is its one place step."""
    if "steps" in scene:
        return scene["steps"]
    return [
        {
            "skill": "place",
            "obj": scene["object"],
            "target": scene["target"],
            "relation": scene["relation"],
            "positions": scene["positions"],
        }
    ]


def _words(step: dict) -> dict:
    obj, target = object_words(step["obj"]), object_words(step.get("target") or "")
    where = ""
    if step.get("target"):
        pos = step["positions"]
        where = relative_place(pos[step["obj"]], pos[step["target"]]).format(target=target)
    return {"obj": obj, "target": target, "where": where, "relation": "in" if step.get("relation") == "in" else "on"}


def step_text(steps: list[dict], i: int, phase: str) -> str:
    """The text of a frame in which step i of `steps` is in its skill phase `phase`."""
    step, words = steps[i], _words(steps[i])
    following = steps[i + 1] if i + 1 < len(steps) else None
    upcoming = DOING[following["skill"]].format(**_words(following)) if following is not None else ""
    then = f"the arm moves on to {upcoming}." if following is not None else "the task is done."
    if step["skill"] == "place":
        if following is not None and phase in FINISHED_PHASES:
            return PLACE_THEN_TEXT.format(next=upcoming, **words)
        return PHASE_TEXT.get(phase, PHASE_TEXT["done"]).format(**words)
    doing, finished = SKILL_TEXT[step["skill"]]
    purpose = ""
    if step["skill"] == "open" and following is not None and following.get("relation") == "in":
        purpose = f" so the {object_words(following['obj'])} can go in"
    text = finished if phase in FINISHED_PHASES else doing
    return text.format(then=then, purpose=purpose, **words)


def annotate(phases: list[str], scene: dict) -> list[str]:
    """One text per recorded phase: TaskExpert phases ('1:place:carry', 'done') or, from older recordings, the
    one place step's bare phase names."""
    steps = scene_steps(scene)
    texts = []
    for p in phases:
        index, _, name = split_phase(p)
        texts.append(step_text(steps, len(steps) - 1 if index is None else index, name))
    return texts


def write_annotations(path: str | Path, episodes: Iterable[tuple[int, list[str]]]) -> Path:
    """episodes: (episode_index, texts per frame). Written to a temporary file, then renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for ep, texts in episodes:
            for frame, text in enumerate(texts):
                f.write(json.dumps({"episode_index": ep, "frame_index": frame, "text": text}) + "\n")
    tmp.replace(path)
    return path
