"""An external policy as an arm: its name, its server's address, and the conventions it was built for (`ArmSpec`),
each one stated, never guessed: what images and state it is sent, what its actions mean, how often it acts."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from ..sim.render_profile import PROFILES
from ..sim.suites import CONTROL_FREQ

# How the cameras are sent. rotated_180: as `sim.LiberoEnv` observes them, the raw MuJoCo render turned 180 degrees
# (img[::-1, ::-1]), the orientation of the public LIBERO data and of openpi's LIBERO example client; raw_render:
# MuJoCo's own bottom-up frame, as an off-screen render returns it.
ORIENTATIONS = ("rotated_180", "raw_render")
# The state layout sent as `observation/state`: this project's `observation.state` (sim.transforms.state8), the 8
# numbers openpi's LIBERO example client sends (the same axis-angle formula). No other layout is known.
STATE_LAYOUTS = ("eef_pos,axis_angle,gripper_qpos",)
# What the arm's last action dimension means, as the sign that turns it into the simulator's -1 open / +1 close.
GRIPPERS = {"open=-1,close=+1": 1.0, "open=+1,close=-1": -1.0}
# Control steps each action is held: a whole divisor of the simulator's rate, so an arm acts at a whole number of Hz.
STEPS_PER_FRAME = tuple(k for k in range(1, CONTROL_FREQ + 1) if CONTROL_FREQ % k == 0)

# What each field means, for the errors and the command's help.
FIELD_HELP = {
    "image_orientation": f"how both cameras are sent, one of {', '.join(ORIENTATIONS)}",
    "render_size": "side in pixels of the square frames the simulator renders",
    "image_size": "side in pixels of the square images sent (resized with padding from render_size, as openpi's "
    "image_tools.resize_with_pad does)",
    "state_layout": f"the 8-D state sent, one of {', '.join(STATE_LAYOUTS)}",
    "chunk_size": "actions in each reply, a whole number >= 1",
    "replan_every": "actions executed from each reply before asking again, in [1, chunk_size]",
    "gripper": f"what the last action dimension means, one of {', '.join(GRIPPERS)}",
    "control_steps_per_frame": f"control steps each action is held, one of {', '.join(map(str, STEPS_PER_FRAME))} "
    f"(the simulator runs at {CONTROL_FREQ} Hz)",
    "render_profile": f"the camera settings rendered with (sim/render_profile.py), one of {', '.join(PROFILES)}",
}

# openpi's LIBERO example client (examples/libero/main.py): frames rendered at 256x256 and rotated 180 degrees, sent
# resized with padding to 224x224; the 8-D state; 5 actions of each reply executed, one per 20 Hz control step, in the
# simulator's gripper convention; LIBERO's own render settings. The chunk length is the served model's, not the
# client's: it is stated apart.
CONVENTIONS = {
    "openpi-libero": {
        "image_orientation": "rotated_180",
        "render_size": 256,
        "image_size": 224,
        "state_layout": "eef_pos,axis_angle,gripper_qpos",
        "replan_every": 5,
        "gripper": "open=-1,close=+1",
        "control_steps_per_frame": 1,
        "render_profile": "libero",
    }
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ArmSpecError(ValueError):
    """An arm's spec names a field it should not, lacks one, or gives one a value no convention has."""


def check_name(name) -> str:
    """An arm's name (it names the arm's folders too): letters, digits, '.', '_' and '-', up to 64 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ArmSpecError(
            f"an arm's name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; "
            f"got {name!r}."
        )
    return name


@dataclass(frozen=True)
class ArmSpec:
    """An external policy's name and the conventions it was built for. Everything here changes what the policy
    sees or what its actions do, so all of it is the arm's identity; where its server runs is not."""

    name: str
    image_orientation: str
    render_size: int
    image_size: int
    state_layout: str
    chunk_size: int
    replan_every: int
    gripper: str
    control_steps_per_frame: int
    render_profile: str

    def __post_init__(self) -> None:
        check_name(self.name)
        bad = []
        for f in ("render_size", "image_size", "chunk_size", "replan_every", "control_steps_per_frame"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad.append(f"{f} is {v!r}, expected {FIELD_HELP[f]}")
        for f, allowed in (
            ("image_orientation", ORIENTATIONS),
            ("state_layout", STATE_LAYOUTS),
            ("gripper", tuple(GRIPPERS)),
            ("render_profile", tuple(PROFILES)),
        ):
            if getattr(self, f) not in allowed:
                bad.append(f"{f} is {getattr(self, f)!r}, expected {FIELD_HELP[f]}")
        if not bad and self.control_steps_per_frame not in STEPS_PER_FRAME:
            bad.append(
                f"control_steps_per_frame is {self.control_steps_per_frame}, expected "
                f"{FIELD_HELP['control_steps_per_frame']}"
            )
        if not bad and not self.replan_every <= self.chunk_size:
            bad.append(
                f"replan_every is {self.replan_every} with chunk_size {self.chunk_size}, expected "
                f"{FIELD_HELP['replan_every']}"
            )
        if bad:
            raise ArmSpecError(f"arm {self.name!r}: " + "; ".join(bad) + ".")

    @property
    def gripper_sign(self) -> float:
        """The factor that turns the arm's gripper action into the simulator's (-1 open, +1 close)."""
        return GRIPPERS[self.gripper]

    @property
    def hz(self) -> float:
        return CONTROL_FREQ / self.control_steps_per_frame

    def conventions(self) -> dict:
        """Every field but the name."""
        return {k: v for k, v in self.to_dict().items() if k != "name"}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ArmSpec:
        """The spec a `to_dict()` recorded, every field present and no other; ArmSpecError names those missing or
        unknown."""
        if not isinstance(data, dict):
            raise ArmSpecError(f"an arm spec is a JSON object of its fields, got {type(data).__name__}.")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names), key=str)
        missing = [n for n in names if n not in data]
        problems = []
        if missing:
            problems.append(
                "it does not state " + "; ".join(f"{n} ({FIELD_HELP[n]})" if n in FIELD_HELP else n for n in missing)
            )
        if unknown:
            problems.append(
                f"it names fields no arm has: {', '.join(map(str, unknown))} (the fields: {', '.join(names)})"
            )
        if problems:
            who = f"arm {data['name']!r}" if isinstance(data.get("name"), str) else "an arm spec"
            raise ArmSpecError(f"{who}: " + "; ".join(problems) + ". Every convention is stated, none is defaulted.")
        return cls(**{n: data[n] for n in names})

    def describe(self) -> str:
        """The conventions in one line, for the console."""
        resize = "" if self.image_size == self.render_size else f", sent at {self.image_size} px (resize with pad)"
        return (
            f"arm {self.name}: cameras {self.image_orientation} rendered at {self.render_size} px{resize} "
            f"({self.render_profile} render settings); state {self.state_layout}; chunks of {self.chunk_size} actions, "
            f"{self.replan_every} executed per reply; gripper {self.gripper}; each action held "
            f"{self.control_steps_per_frame} control step(s) ({self.hz:g} Hz)"
        )


def parse_arm(text: str) -> tuple[str, str]:
    """'NAME=ws://HOST:PORT' -> (name, address)."""
    name, sep, address = str(text).partition("=")
    if not sep:
        raise ArmSpecError(f"an arm is NAME=ws://HOST:PORT, got {text!r}.")
    return check_name(name), check_address(address)


def check_address(address: str) -> str:
    """A policy server's ws:// (or wss://) address with its host and port."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        port, parts = None, None
    if parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname or port is None:
        raise ArmSpecError(f"an arm's server address is ws://HOST:PORT (or wss://), got {address!r}.")
    return address


def field_value(text: str) -> tuple[str, object]:
    """'FIELD=VALUE' (a command-line field) -> (field, value), the value a number where the field is one."""
    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or key not in FIELD_HELP:
        raise ArmSpecError(f"an arm field is FIELD=VALUE with FIELD one of {', '.join(FIELD_HELP)}; got {text!r}.")
    if key in ("render_size", "image_size", "chunk_size", "replan_every", "control_steps_per_frame"):
        try:
            return key, int(value)
        except ValueError:
            raise ArmSpecError(f"arm field {key} must be a whole number ({FIELD_HELP[key]}), got {value!r}.") from None
    return key, value


def build_spec(name: str, convention: str | None = None, file: str | Path | None = None, fields_set=()) -> ArmSpec:
    """The spec of arm `name`: a named convention's fields, then a JSON file's, then FIELD=VALUE ones, each later
    one replacing an earlier one; any field none of them states is an error naming it."""
    stated: dict = {}
    if convention is not None:
        if convention not in CONVENTIONS:
            raise ArmSpecError(f"unknown arm convention {convention!r}; expected one of {', '.join(CONVENTIONS)}.")
        stated.update(CONVENTIONS[convention])
    if file is not None:
        try:
            data = json.loads(Path(file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArmSpecError(f"arm spec file {file}: {e}; expected a JSON object of the arm's fields.") from None
        if not isinstance(data, dict):
            raise ArmSpecError(f"arm spec file {file} holds a {type(data).__name__}; expected a JSON object.")
        if "name" in data and data["name"] != name:
            raise ArmSpecError(f"arm spec file {file} is arm {data['name']!r}'s, not {name!r}'s.")
        stated.update({k: v for k, v in data.items() if k != "name"})
    stated.update(field_value(t) for t in fields_set)
    return ArmSpec.from_dict({"name": name, **stated})
