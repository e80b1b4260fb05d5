"""openpi's LIBERO example keys, accepted by the server as aliases of this project's observation keys: the same
cameras in the same orientation and the same state layout, under other names."""

from __future__ import annotations

from ..sim.env import IMAGE_KEY, STATE_KEY, WRIST_KEY
from .checks import BadRequest

TASK_KEY = "task"
# openpi's LIBERO client (examples/libero/main.py) sends both cameras rotated 180 degrees (img[::-1, ::-1]), the
# orientation `sim.LiberoEnv` renders and the public LIBERO data stores, resized with padding to (224, 224, 3) uint8;
# and the state as `sim.transforms.state8` builds it (the same axis-angle formula). A camera sent under its openpi key
# is checked and resized as under its own.
ALIASES = {
    "observation/image": IMAGE_KEY,  # agentview
    "observation/wrist_image": WRIST_KEY,  # robot0_eye_in_hand
    "observation/state": STATE_KEY,
    "prompt": TASK_KEY,
}
ALIAS_OF = {ours: theirs for theirs, ours in ALIASES.items()}
OPENPI_STATE = "8 numbers: end-effector position (3), axis-angle (3), gripper finger positions (2)"
OPENPI_STATE_DIM = 8


def carrier(obs: dict, key: str, what: str) -> str:
    """The key of `obs` that carries this project's `key`: `key` itself, or its openpi alias when only that was
    sent. BadRequest when neither is there, or both are (two values, and no telling which one was meant)."""
    alias = ALIAS_OF.get(key)
    if alias is None or (key in obs and alias not in obs):
        return key
    if key in obs:
        raise BadRequest(f"the observation carries both {key!r} and its openpi alias {alias!r}; send one of them.")
    if alias not in obs:
        raise BadRequest(
            f"the observation lacks {key!r} (or openpi's {alias!r}), {what} (it has {sorted(map(str, obs))[:20]})."
        )
    return alias


def state_layout(sent: str, state_dim: int) -> str:
    """What the state under `sent` must be; BadRequest when it is openpi's 8-D state and the checkpoint's state
    has another layout, onto which it cannot be mapped."""
    if sent == STATE_KEY:
        return f"a vector of {state_dim} numbers (the checkpoint's state dimension)"
    if state_dim != OPENPI_STATE_DIM:
        raise BadRequest(
            f"{sent!r} is openpi's LIBERO state ({OPENPI_STATE}), but this checkpoint's {STATE_KEY!r} has "
            f"{state_dim} numbers, a layout it cannot be mapped onto; send {STATE_KEY!r} in the checkpoint's layout."
        )
    return f"openpi's LIBERO state, a vector of {OPENPI_STATE}"
