"""What one request to the policy server may hold, checked field by field before the model thread sees it: every
refusal names the field, what was received and what the checkpoint expects, and nothing unbounded (an instruction of
a million characters, an image larger than the advertised render size) reaches the model, where one such request
would hold up every other client."""

from __future__ import annotations

import numpy as np

# A LIBERO instruction is under 100 characters; a prompt is tokenised whole, so its length is the model's time.
MAX_INSTRUCTION_CHARS = 2000
MAX_INSTRUCTIONS = 64  # instructions a reset may name (the tasks being evaluated)
MAX_ID_CHARS = 256  # an episode id
SEED_MAX = 2**64 - 1  # what torch.Generator.manual_seed and numpy's default_rng both take
# Beyond the arrays the checkpoint advertises, room for the keys a client sends along (another camera, an instruction).
MESSAGE_SLACK_BYTES = 4 << 20


class BadRequest(ValueError):
    """A request the policy cannot answer (a missing key, a wrong shape or dtype, a non-finite number, a field
    past its limit)."""


def show(value, limit: int = 60) -> str:
    """A value as a refusal quotes it: a long one cut, with its length, so that a reply stays one short line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:limit]}... ({size})"


def array(obs: dict, key: str, what: str) -> np.ndarray:
    """The numeric array under `key`, or BadRequest naming it and `what` it should be."""
    if key not in obs:
        raise BadRequest(f"the observation lacks {key!r}, {what} (it has {sorted(map(str, obs))[:20]}).")
    value = obs[key]
    if not isinstance(value, np.ndarray):
        raise BadRequest(f"{key!r} must be {what}, got {type(value).__name__} {show(value)}.")
    if value.dtype.kind not in "uif":
        raise BadRequest(f"{key!r} must be {what}, got dtype {value.dtype}.")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise BadRequest(f"{key!r} holds NaN or infinite values; expected {what} of finite numbers.")
    return value


def frames(
    obs: dict, key: str, lead: tuple[int, ...], size: tuple[int, int], name: str, camera: str | None = None
) -> np.ndarray:
    """uint8 frames (*lead, H, W, 3) with 1 <= H, W <= the render size advertised for `camera` (`key` itself when
    None): a larger frame is only resized down to image_size, so it carries nothing the policy sees, and its bytes
    are the request's bulk."""
    h, w = size
    shape = "(" + "".join(f"{n}, " for n in lead) + "H, W, 3)"
    what = f"{shape} uint8 with H <= {h} and W <= {w} (the render size the server advertises for {camera or key!r})"
    value = array(obs, key, what)
    ok = value.dtype == np.uint8 and value.ndim == len(lead) + 3 and value.shape[-1] == 3
    ok = ok and tuple(value.shape[: len(lead)]) == lead and 1 <= value.shape[-3] <= h and 1 <= value.shape[-2] <= w
    if not ok:
        raise BadRequest(f"{name} {key!r} must be {what}, got shape {tuple(value.shape)} {value.dtype}.")
    return value


def instruction(value, field: str) -> str:
    """An instruction: a string of at most MAX_INSTRUCTION_CHARS characters."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be the instruction as a string, got {type(value).__name__} {show(value)}.")
    if len(value) > MAX_INSTRUCTION_CHARS:
        raise BadRequest(
            f"{field} is {len(value)} characters long; an instruction may have at most {MAX_INSTRUCTION_CHARS}."
        )
    return value


def integer(value, field: str, low: int, high: int, what: str) -> int:
    """An int (a numpy integer too, not a bool) in [low, high]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise BadRequest(f"{field} must be {what}, got {type(value).__name__} {show(value)}.")
    return int(value)


def episode_id(value, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise BadRequest(
            f"{field} must be a string of 1 to {MAX_ID_CHARS} characters, got {type(value).__name__} {show(value)}."
        )
    return value


def max_message_bytes(render_sizes: dict, num_frames: int, world_key: str | None, state_dims: int | None) -> int:
    """The largest message the server reads: twice the advertised arrays (every camera, the world window) and
    MESSAGE_SLACK_BYTES; a longer one closes the connection (WebSocket code 1009) before it is read."""
    cameras = sum(h * w * 3 for h, w in render_sizes.values())
    if state_dims is not None:
        window = num_frames * state_dims * 8
    elif world_key is not None:
        h, w = render_sizes[world_key]
        window = num_frames * h * w * 3
    else:
        window = 0
    return MESSAGE_SLACK_BYTES + 2 * (cameras + window)
