"""The client side of a policy server (openpi's protocol, `world-modality serve`): `PolicyClient(host, port).infer(obs)`
-> {"actions": (chunk, action_dim), "server_timing": {...}}, and `RemoteRunner`, the inference interface
(`EpisodeRunner`) over a server's chunks, so a closed loop runs unchanged on a machine that never loads the
checkpoint. A request the server cannot answer comes back as a text frame naming why (as openpi's server sends an
error), raised here as `RequestRefused`.

Besides openpi's plain observations, a request may name an episode: `{RESET_KEY: {EPISODE_KEY, "seed",
"instructions"}}` starts one on the server (its noise stream seeded as `PolicyRunner.reset` seeds it), and an
observation carrying EPISODE_KEY and STEP_KEY (its chunk index in the episode) draws from that stream only."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from ..sim.render_profile import recorded_profile
from . import wire
from .episode import EpisodeRunner, check_temporal_ensemble

WORLD_KEY, EPISODE_KEY, STEP_KEY, RESET_KEY = "world_frames", "episode_id", "episode_step", "reset"


MESSAGE_TOO_BIG = 1009  # the WebSocket close code of a server that will not read a message this long


class ServerLost(ConnectionError):
    """The policy server could not be reached again after a lost connection, with every retry spent."""


class RequestRefused(ValueError):
    """The server answered a request with an error (a malformed observation, a failed inference)."""


# What a lost connection raises: closed, a failed handshake, refused or timed out (TimeoutError is an OSError).
LOST_CONNECTION = (ConnectionClosed, InvalidHandshake, OSError)


class ReconnectingClient:
    """A WebSocket connection to a policy server that is reopened when lost: a request is resent up to `retries`
    more times with doubling waits from `backoff_s`, then ServerLost. Both clients (`PolicyClient` here, this
    project's protocol; `external.OpenpiClient`, openpi's) share it, so they lose and regain a server alike. A
    subclass sets `uri`, `retries`, `backoff_s` and `_ws` (None), opens `_ws` in `_connect` (reading the server's
    first message), and names in `_unrecoverable` the errors a resend cannot mend."""

    uri: str
    retries: int
    backoff_s: float
    _ws: ClientConnection | None

    def _connect(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} opens no connection: a client defines _connect().")

    def _unrecoverable(self, err: Exception) -> Exception | None:
        """The error to raise at once (after closing the connection) instead of resending after `err`; None: resend."""
        return None

    def _with_retries(self, call):
        errors = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                if self._ws is None:
                    self._connect()
                return call()
            except LOST_CONNECTION as err:
                final = self._unrecoverable(err)
                if final is not None:
                    self.close()
                    raise final from None
                errors.append(f"{type(err).__name__}: {err}")
                self.close()
        raise ServerLost(f"policy server {self.uri} lost: {1 + self.retries} tries failed ({errors[-1]}).")

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            finally:
                self._ws = None


def parse_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a policy server address is HOST:PORT, got {address!r}.")
    return host, int(port)


class PolicyClient(ReconnectingClient):
    """One connection to a policy server. A lost connection is reopened on the next request, up to `retries`
    more times with doubling waits from `backoff_s` (`ReconnectingClient`); a message the server will not read for
    its size is refused at once. Resending is safe: a plain request carries no episode state, and the server
    answers a resent episode step from its cache instead of drawing noise again."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        retries: int = 3,
        backoff_s: float = 0.2,
        open_timeout_s: float = 10.0,
    ):
        self.uri = host if host.startswith("ws") else f"ws://{host}:{port}"
        self.retries, self.backoff_s, self.open_timeout_s = retries, backoff_s, open_timeout_s
        self._ws: ClientConnection | None = None
        self.metadata: dict = {}
        self._with_retries(lambda: None)  # connects, with the same retries as a request

    def _connect(self) -> None:
        # legacy=True: a connection kept open across calls, not one scoped to a `with` block.
        self._ws = connect(self.uri, compression=None, max_size=None, open_timeout=self.open_timeout_s, legacy=True)
        self.metadata = wire.unpackb(self._ws.recv())

    def _unrecoverable(self, err: Exception) -> Exception | None:
        closed = getattr(err, "rcvd", None)
        if closed is not None and closed.code == MESSAGE_TOO_BIG:
            # Resending the same message would be refused the same way.
            return RequestRefused(f"policy server {self.uri} refused the request: {closed.reason}")
        return None

    def _request(self, message: bytes) -> dict | str:
        self._ws.send(message)
        reply = self._ws.recv()
        return reply if isinstance(reply, str) else wire.unpackb(reply)

    def _ask(self, message: dict) -> dict:
        packed = wire.packb(message)
        reply = self._with_retries(lambda: self._request(packed))
        # An error is a text frame, as openpi's server sends one (its traceback); an answer is always msgpack bytes.
        if isinstance(reply, str):
            raise RequestRefused(f"policy server {self.uri}: {reply}")
        if "error" in reply:  # a server from before errors were text frames
            raise RequestRefused(reply["error"])
        return reply

    def infer(self, obs: dict) -> dict:
        """The server's reply to one observation; RequestRefused when it answers with an error."""
        return self._ask(obs)

    def reset_episode(self, episode_id: str, seed: int, instructions: list[str]) -> None:
        """Start (or restart) the episode `episode_id` on the server with its own noise stream."""
        self._ask({RESET_KEY: {EPISODE_KEY: episode_id, "seed": int(seed), "instructions": list(instructions)}})

    def get_server_metadata(self) -> dict:
        return self.metadata

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemoteRunner(EpisodeRunner):
    """The inference interface (`reset`, `select_action`, `needs_*`, `world_input`) over a server's chunks. Each
    `reset(seed, instructions)` starts a new episode on the server, seeded as a local runner's reset seeds it, so
    an episode draws the same noise (flow head, `random` and `shuffle` memory) as it would locally.
    `temporal_ensemble` blends the server's chunks here, as a local runner does (`PolicyRunner`)."""

    def __init__(self, address: str, retries: int = 3, backoff_s: float = 0.5, temporal_ensemble: float | None = None):
        self.temporal_ensemble = check_temporal_ensemble(temporal_ensemble)  # before connecting: a typo fails at once
        host, port = parse_address(address)
        self.client = PolicyClient(host, port, retries=retries, backoff_s=backoff_s)
        meta = self.metadata = self.client.get_server_metadata()
        self.checkpoint, self.memory_mode = meta["checkpoint"], meta["memory_mode"]
        self.cfg = SimpleNamespace(data=SimpleNamespace(image_size=meta["image_size"]))  # what a worker reads
        self.uses_world, self.world_key = meta["uses_world"], meta["world_key"]
        self.world_state_names = meta["world_state_names"]
        self.num_frames, self.frame_stride = meta["num_frames"], meta["frame_stride"]
        self.image_keys, self.chunk_size = tuple(meta["image_keys"]), meta["chunk_size"]
        self.control_steps_per_frame = meta["control_steps_per_frame"]
        # The server snaps each chunk's gripper; an ensemble's mean of them is snapped here. A server from before
        # it named this sends none: its chunks are blended unsnapped.
        self.binary_gripper = bool(meta.get("binary_gripper", False))
        self.render_sizes = {k: tuple(v) for k, v in meta["render_sizes"].items()}
        # A server from before render profiles (or another project's) names none: LIBERO's settings.
        self.render_profile = recorded_profile({"render_profile": meta.get("render_profile")})
        self.replan_every = meta["replan_every"]
        self._clear_episode()
        self._episode: str | None = None  # None until reset: requests then use the server's shared stream
        self._step = 0

    def reset(self, seed: int = 0, instructions=(), replan_every: int | None = None) -> None:
        super().reset(seed, instructions, replan_every)
        if isinstance(instructions, str):
            instructions = (instructions,)
        # A fresh id each time: a retried episode never meets state its first try left on the server.
        self._episode, self._step = uuid.uuid4().hex, 0
        self.client.reset_episode(self._episode, seed, [str(t) for t in instructions])

    def act(self, observation: dict, world_frames: np.ndarray | None = None) -> np.ndarray:
        request = dict(observation)
        if self.uses_world:
            if world_frames is None:
                raise ValueError("this policy injects the world modality: act() needs the last m world frames.")
            request[WORLD_KEY] = np.asarray(world_frames)
        if self._episode is not None:
            request.update({EPISODE_KEY: self._episode, STEP_KEY: self._step})
        actions = self.client.infer(request)["actions"]
        self._step += 1
        return actions

    def close(self) -> None:
        self.client.close()
