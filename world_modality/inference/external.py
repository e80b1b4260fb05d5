"""An external policy server behind the inference interface (`ExternalRunner`), spoken to in openpi's LIBERO example
protocol: metadata on connect, one msgpack map per request (`observation/image`, `observation/wrist_image`,
`observation/state`, `prompt`), a map with `actions` (chunk, 7) per reply, an error as a text frame. What is sent and
how the actions are read follow the arm's stated conventions (`arm.ArmSpec`).

A reply that is not a map with a finite (chunk_size, 7) `actions` array is refused (`BadReply`), one that does not
come within `timeout_s` ends the request (`ServerHung`): both raise, so an evaluation counts the episode as an error,
never as the policy's failure."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from websockets.sync.client import ClientConnection, connect

from ..sim.env import IMAGE_KEY, STATE_KEY, WRIST_KEY
from . import wire
from .arm import ArmSpec, check_address
from .episode import EpisodeRunner, check_temporal_ensemble
from .remote import ReconnectingClient, RequestRefused

# openpi's LIBERO example keys (serve/openpi_keys.py accepts the same ones as aliases).
OPENPI_IMAGE, OPENPI_WRIST, OPENPI_STATE, OPENPI_PROMPT = (
    "observation/image",
    "observation/wrist_image",
    "observation/state",
    "prompt",
)
ACTION_DIM = 7  # LIBERO's delta end-effector pose and gripper


class ServerHung(TimeoutError):
    """The server sent nothing within the timeout: not resent, since a hung server would hang again."""


class BadReply(ValueError):
    """The server answered with something other than openpi's reply: a map with a (chunk_size, 7) `actions` array."""


def resize_with_pad(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: scaled to fit (PIL bilinear), centred on black, as openpi's
    `image_tools.resize_with_pad` does (the same arithmetic, so the pixels are the same)."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    resized = Image.fromarray(image).resize((rw, rh), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (size, size), 0)
    canvas.paste(resized, (max(0, int((size - rw) / 2)), max(0, int((size - rh) / 2))))
    return np.asarray(canvas)


class OpenpiClient(ReconnectingClient):
    """One connection to a server speaking openpi's protocol, every wait bounded by `timeout_s`. A lost connection
    (refused, closed) is reopened and the request resent up to `retries` more times with doubling waits from
    `backoff_s`: openpi's requests carry no state, so resending is safe. A request unanswered within `timeout_s`
    closes the connection (a late answer must not be read as the next one's) and raises ServerHung."""

    def __init__(self, address: str, timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 0.5):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive seconds, got {timeout_s!r}.")
        self.uri = check_address(address)
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), int(retries), float(backoff_s)
        self._ws: ClientConnection | None = None
        self.metadata: dict = {}
        self._with_retries(lambda: None)

    def _recv(self):
        try:
            return self._ws.recv(timeout=self.timeout_s)
        except TimeoutError:
            self.close()
            raise ServerHung(f"policy server {self.uri} sent nothing within {self.timeout_s:g} s.") from None

    def _connect(self) -> None:
        # legacy=True: a connection kept open across calls, not one scoped to a `with` block.
        self._ws = connect(self.uri, compression=None, max_size=None, open_timeout=self.timeout_s, legacy=True)
        first = self._recv()
        try:
            meta = wire.unpackb(first) if isinstance(first, bytes) else None
        except Exception:  # noqa: BLE001 (any undecodable bytes)
            meta = None
        if not isinstance(meta, dict):
            self.close()
            raise BadReply(
                f"policy server {self.uri} opened with {_shown(first)}; openpi's server first sends its metadata, "
                "a msgpack map."
            )
        self.metadata = meta

    def _unrecoverable(self, err: Exception) -> Exception | None:
        return err if isinstance(err, ServerHung) else None  # a hung server would hang again

    def _exchange(self, message: bytes):
        self._ws.send(message)
        return self._recv()

    def infer(self, obs: dict) -> dict:
        """The server's reply to one observation, a map; RequestRefused when it answers with an error (a text
        frame), BadReply when with anything but a map."""
        reply = self._with_retries(lambda: self._exchange(wire.packb(obs)))
        if isinstance(reply, str):
            self.close()  # openpi's server closes the connection after an error
            raise RequestRefused(f"policy server {self.uri} answered with an error: {reply.strip()[-2000:]}")
        try:
            out = wire.unpackb(reply)
        except Exception as e:  # noqa: BLE001 (any undecodable bytes)
            raise BadReply(f"policy server {self.uri} answered with bytes that are not msgpack ({e}).") from None
        if not isinstance(out, dict):
            raise BadReply(f"policy server {self.uri} answered with {_shown(out)}; expected a map with 'actions'.")
        return out


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:200]}{'...' if len(text) > 200 else ''}"


def check_actions(reply: dict, chunk_size: int, uri: str) -> np.ndarray:
    """The reply's `actions` as a float32 (chunk_size, 7) array; BadReply naming what came instead."""
    if "actions" not in reply:
        raise BadReply(
            f"policy server {uri} answered without 'actions' (keys {sorted(map(str, reply))[:20]}); expected "
            f"a ({chunk_size}, {ACTION_DIM}) array under 'actions'."
        )
    actions = reply["actions"]
    arr = np.asarray(actions) if isinstance(actions, (np.ndarray, list, tuple)) else None
    if arr is None or arr.dtype.kind not in "fiu" or arr.shape != (chunk_size, ACTION_DIM):
        got = f"{arr.dtype} array of shape {arr.shape}" if arr is not None else _shown(actions)
        raise BadReply(
            f"policy server {uri} answered 'actions' as {got}; the arm states chunks of {chunk_size} actions, so "
            f"expected a numeric ({chunk_size}, {ACTION_DIM}) array."
        )
    if not np.isfinite(arr).all():
        raise BadReply(f"policy server {uri} answered 'actions' with non-finite values (NaN or inf).")
    return arr.astype(np.float32)


class ExternalRunner(EpisodeRunner):
    """The inference interface (`reset`, `select_action`, `needs_*`) over an external server's chunks. Each chunk is
    asked for with the observation sent as the arm states (`ArmSpec`): both cameras oriented and resized, the 8-D
    state (float64, as openpi's client sends it) and the instruction as `prompt`; the first `replan_every` actions
    are executed, the gripper turned into the simulator's -1 open / +1 close, each held `control_steps_per_frame`
    control steps. The simulator renders at `render_size` with the arm's render profile. Nothing of this project's
    own protocol is sent (no episode ids, no resets): the server sees what openpi's LIBERO client sends."""

    def __init__(
        self,
        address: str,
        spec: ArmSpec,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        temporal_ensemble: float | None = None,
    ):
        self.temporal_ensemble = check_temporal_ensemble(temporal_ensemble)
        if not isinstance(spec, ArmSpec):
            raise TypeError(
                f"spec must be an ArmSpec (ArmSpec.from_dict of a recorded one), got {type(spec).__name__}."
            )
        self.spec, self.address = spec, address
        self.client = OpenpiClient(address, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        self.metadata = self.client.metadata
        self.image_keys = (IMAGE_KEY, WRIST_KEY)
        self.render_sizes = {k: (spec.render_size, spec.render_size) for k in self.image_keys}
        self.render_profile = spec.render_profile
        self.cfg = SimpleNamespace(data=SimpleNamespace(image_size=spec.render_size))  # what a worker reads
        self.chunk_size, self.replan_every = spec.chunk_size, spec.replan_every
        self.control_steps_per_frame = spec.control_steps_per_frame
        self.binary_gripper = False  # an ensemble's mean is executed as it comes: the arm states no snapping
        self.uses_world, self.world_key, self.world_state_names = False, None, None
        self.num_frames, self.frame_stride = 1, 1
        self._instruction: str | None = None
        self._clear_episode()

    def reset(self, seed: int = 0, instructions=(), replan_every: int | None = None) -> None:
        """`EpisodeRunner.reset`; the first instruction is the prompt when an observation carries no `task`. The
        seed is not sent: openpi's protocol has no episodes."""
        super().reset(seed, instructions, replan_every)
        if isinstance(instructions, str):
            instructions = (instructions,)
        self._instruction = next((str(t) for t in instructions if t), None)

    def _image(self, image) -> np.ndarray:
        img = np.asarray(image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"a camera frame must be (H, W, 3) uint8, got {img.dtype} {img.shape}.")
        if self.spec.image_orientation == "raw_render":
            img = img[::-1, ::-1]  # the observation is rotated 180 degrees from the render: turned back
        return np.ascontiguousarray(resize_with_pad(np.ascontiguousarray(img), self.spec.image_size))

    def request(self, observation: dict) -> dict:
        """The openpi request for one observation in this project's schema."""
        prompt = observation.get("task") or self._instruction
        if not prompt:
            raise ValueError("the observation carries no 'task' and reset() named no instruction: no prompt to send.")
        state = np.asarray(observation[STATE_KEY], dtype=np.float64)
        if state.shape != (8,):
            raise ValueError(f"the state must be {self.spec.state_layout} (8 numbers), got shape {state.shape}.")
        return {
            OPENPI_IMAGE: self._image(observation[IMAGE_KEY]),
            OPENPI_WRIST: self._image(observation[WRIST_KEY]),
            OPENPI_STATE: state,
            OPENPI_PROMPT: str(prompt),
        }

    def act(self, observation: dict, world_frames: np.ndarray | None = None) -> np.ndarray:
        reply = self.client.infer(self.request(observation))
        actions = check_actions(reply, self.chunk_size, self.client.uri)
        actions[:, -1] *= self.spec.gripper_sign
        return actions

    def close(self) -> None:
        self.client.close()
