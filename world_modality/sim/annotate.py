"""Chain-of-causation annotations from the expert's phases and the scene: one short text per frame,
saying what the arm does next and why, in the JSONL format E4's `--coc_jsonl` reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

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


def object_words(name: str) -> str:
    """'akita_black_bowl_1' -> 'black bowl'; 'basket_1_contain_region' -> 'basket'."""
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


def annotate(phases: list[str], scene: dict) -> list[str]:
    obj, target = object_words(scene["object"]), object_words(scene["target"])
    pos = scene["positions"]
    where = relative_place(pos[scene["object"]], pos[scene["target"]]).format(target=target)
    relation = "on" if scene["relation"] == "on" else "in"
    return [
        PHASE_TEXT.get(p, PHASE_TEXT["done"]).format(obj=obj, target=target, where=where, relation=relation)
        for p in phases
    ]


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
