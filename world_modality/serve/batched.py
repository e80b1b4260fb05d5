"""The policy behind the server: a `PolicyRunner` asked for whole action chunks, one request or several stacked into
one forward pass, with each request checked first so that a bad one is refused before it reaches the model (in this
project's keys or openpi's LIBERO example's, `openpi_keys.py`), and each client episode drawing its noise from its
own stream, as the same episode would locally."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch

from ..inference.remote import EPISODE_KEY, RESET_KEY, STEP_KEY, WORLD_KEY
from ..inference.runner import PolicyRunner, model_inputs
from ..policy.checkpoint_store import weights_sha256
from .checks import (
    MAX_INSTRUCTION_CHARS,
    MAX_INSTRUCTIONS,
    SEED_MAX,
    BadRequest,
    array,
    episode_id,
    frames,
    instruction,
    integer,
    max_message_bytes,
    show,
)
from .openpi_keys import STATE_KEY, TASK_KEY, carrier, state_layout

MAX_EPISODES = 4096  # episodes whose noise stream the server keeps; the least recently used goes first


class Request(NamedTuple):
    """A checked request: the observation (its cameras, state and instruction, nothing else), the world window,
    and the client's episode and chunk index in it (None for a plain openpi request, which uses the shared
    stream)."""

    obs: dict
    window: np.ndarray | None
    episode: str | None = None
    step: int | None = None


class _Episode:
    """One client episode's noise: the runner's generator, numpy stream and `shuffle` choices, and its last chunk
    (a resent request, after a lost connection, is answered from it rather than drawing again)."""

    def __init__(self, generator, rng, eligible):
        self.generator, self.rng, self.eligible = generator, rng, eligible
        self.step, self.last = -1, None


class BatchedPolicy:
    """A `PolicyRunner` at the chunk level for a server: `metadata()` for clients, `check(obs)` per request and
    `act_batch(observations)` -> one (chunk, action_dim) float32 array per observation. An observation is what
    `sim.LiberoEnv` gives (the dataset's cameras as (H, W, 3) uint8, `observation.state`, `task`; or openpi's
    LIBERO keys for them, `openpi_keys.ALIASES`) plus, for a policy that injects the world modality, `world_frames`:
    the runner's world window, (m, H, W, 3) uint8 frames or (m, D) states. Between requests only noise streams are
    kept: the runner's, shared by plain requests, and one per episode a client started with `reset_episode` (its
    requests name it and their chunk index)."""

    def __init__(self, runner: PolicyRunner):
        self.runner = runner
        self._episodes: OrderedDict[str, _Episode] = OrderedDict()
        self._sha = weights_sha256(runner.checkpoint)  # once: clients compare it with the checkpoint they name
        r = runner
        self.state_dim = int(r.policy.shapes.state_dim)
        world_camera = r.world_key if r.uses_world and r.world_state_names is None else None
        states = len(r.world_state_names) if r.uses_world and r.world_state_names is not None else None
        self.max_message_bytes = max_message_bytes(r.render_sizes, r.num_frames, world_camera, states)
        # Requests of episodes are stacked only when nothing is drawn: one batch shares one noise stream.
        self.draws_noise = type(r.policy.head).__name__ == "FlowHead" or r.memory_mode in ("random", "shuffle")

    def metadata(self) -> dict:
        r = self.runner
        return {
            "checkpoint": str(r.checkpoint),
            "memory_mode": r.memory_mode,
            "chunk_size": int(r.chunk_size),
            "image_keys": list(r.image_keys),
            "render_sizes": {k: list(v) for k, v in r.render_sizes.items()},
            "render_profile": r.render_profile,
            "uses_world": bool(r.uses_world),
            "world_key": r.world_key,
            "num_frames": int(r.num_frames),
            "frame_stride": int(r.frame_stride),
            "replan_every": int(r.replan_every),
            "control_steps_per_frame": int(r.control_steps_per_frame),
            "binary_gripper": bool(r.binary_gripper),
            "world_frames_key": WORLD_KEY,
            "world_state_names": r.world_state_names,
            "image_size": int(r.cfg.data.image_size),
            "weights_sha256": self._sha,
            "state_dim": self.state_dim,
            "max_instruction_chars": MAX_INSTRUCTION_CHARS,
            "max_message_bytes": self.max_message_bytes,
        }

    def check_reset(self, message: dict) -> tuple[str, int, list[str]]:
        """A reset message's (episode, seed, instructions), or BadRequest naming the field."""
        body = message[RESET_KEY]
        if not isinstance(body, dict):
            raise BadRequest(
                f"{RESET_KEY!r} must be a map of {EPISODE_KEY!r}, 'seed' and 'instructions', got "
                f"{type(body).__name__} {show(body)}."
            )
        episode = episode_id(body.get(EPISODE_KEY), f"reset {EPISODE_KEY!r}")
        seed = integer(body.get("seed"), "reset 'seed'", 0, SEED_MAX, f"an integer in [0, {SEED_MAX}]")
        instructions = body.get("instructions", [])
        if not isinstance(instructions, (list, tuple)) or len(instructions) > MAX_INSTRUCTIONS:
            raise BadRequest(
                f"reset 'instructions' must be a list of at most {MAX_INSTRUCTIONS} strings, got "
                f"{type(instructions).__name__} {show(instructions)}."
            )
        return episode, seed, [instruction(t, f"reset 'instructions'[{i}]") for i, t in enumerate(instructions)]

    def reset_episode(self, episode: str, seed: int, instructions: list[str]) -> None:
        """Start `episode` with the noise state `PolicyRunner.reset(seed, instructions)` gives (anew if it exists)."""
        r = self.runner
        saved = r.generator, r._rng, r._eligible
        r.generator = torch.Generator(device=r.device)
        try:
            r.reset(seed, instructions)
            self._episodes[episode] = _Episode(r.generator, r._rng, r._eligible)
        finally:
            r.generator, r._rng, r._eligible = saved
        self._episodes.move_to_end(episode)
        while len(self._episodes) > MAX_EPISODES:
            self._episodes.popitem(last=False)

    def check(self, obs) -> Request:
        """The checked request, or BadRequest naming the field, what was received and what was expected. Only the
        keys the model reads are kept: anything else a client sends along never reaches it."""
        if not isinstance(obs, dict):
            raise BadRequest(f"a request must be a map of observation keys, got {type(obs).__name__}.")
        r = self.runner
        kept = {}
        for key in r.image_keys:  # an error names the key the client sent, and the camera it stands for
            h, w = r.render_sizes[key]
            sent = carrier(obs, key, f"(H, W, 3) uint8 with H <= {h} and W <= {w}")
            kept[key] = frames(obs, sent, (), (h, w), "camera", camera=key)
        sent = carrier(obs, STATE_KEY, f"a vector of {self.state_dim} numbers (the checkpoint's state dimension)")
        what = state_layout(sent, self.state_dim)
        state = array(obs, sent, what)
        if state.shape != (self.state_dim,):
            raise BadRequest(f"{sent!r} must be {what}, got shape {tuple(state.shape)}.")
        sent = carrier(obs, TASK_KEY, "the instruction as a string")
        kept.update({STATE_KEY: state, TASK_KEY: instruction(obs[sent], repr(sent))})
        window = None
        if r.uses_world and r.world_state_names is not None:
            want = (r.num_frames, len(r.world_state_names))
            window = array(obs, WORLD_KEY, f"{want} object states")
            if window.shape != want:
                raise BadRequest(f"{WORLD_KEY!r} must be {want} object states, got shape {tuple(window.shape)}.")
        elif r.uses_world:
            size = r.render_sizes[r.world_key]
            window = frames(obs, WORLD_KEY, (r.num_frames,), size, "the world window", camera=r.world_key)
        episode, step = obs.get(EPISODE_KEY), obs.get(STEP_KEY)
        if (episode is None) != (step is None):
            raise BadRequest(f"{EPISODE_KEY!r} (a string) and {STEP_KEY!r} (an int) come together or not at all.")
        if episode is not None:
            episode = episode_id(episode, repr(EPISODE_KEY))
            step = integer(step, repr(STEP_KEY), 0, 2**63 - 1, "a chunk index >= 0")
        return Request(kept, window, episode, step)

    def act_batch(self, requests: list[Request]) -> list[np.ndarray | BadRequest]:
        """Checked requests -> their chunks, or a BadRequest for an episode step out of turn. One request is
        exactly `PolicyRunner.act` (with its episode's stream); several whose arrays agree in shape go through the
        model as one batch when that draws no episode's noise (otherwise one by one)."""
        out: list = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            ep = None if req.episode is None else self._episodes.get(req.episode)
            if req.episode is None:
                todo.append(i)
            elif ep is None:
                out[i] = BadRequest(f"unknown episode {req.episode!r} (a restarted server?): send a reset first.")
            elif req.step == ep.step and ep.last is not None:
                out[i] = ep.last  # resent after a lost connection
            elif req.step != ep.step + 1:
                out[i] = BadRequest(f"episode {req.episode!r}: chunk {req.step} asked, {ep.step + 1} expected.")
            else:
                todo.append(i)
        batch = [requests[i] for i in todo]
        if (
            len(batch) <= 1
            or not self._stackable(batch)
            or (self.draws_noise and any(r.episode is not None for r in batch))
        ):
            chunks = [self._act_one(r) for r in batch]
        else:
            chunks = list(self._act_stacked([r.obs for r in batch], [r.window for r in batch]))
        for i, chunk in zip(todo, chunks):
            out[i] = chunk
            if requests[i].episode is not None:
                ep = self._episodes[requests[i].episode]
                ep.step, ep.last = requests[i].step, chunk
                self._episodes.move_to_end(requests[i].episode)
        return out

    def _act_one(self, req: Request) -> np.ndarray:
        r = self.runner
        if req.episode is None:
            return r.act(req.obs, req.window)
        ep, saved = self._episodes[req.episode], (r.generator, r._rng, r._eligible)
        r.generator, r._rng, r._eligible = ep.generator, ep.rng, ep.eligible
        try:
            return r.act(req.obs, req.window)
        finally:
            r.generator, r._rng, r._eligible = saved

    @staticmethod
    def _stackable(requests) -> bool:
        first_obs, first_window = requests[0][:2]
        shapes = {k: v.shape for k, v in first_obs.items() if isinstance(v, np.ndarray)}
        return all(
            {k: v.shape for k, v in o.items() if isinstance(v, np.ndarray)} == shapes
            and (w is None or w.shape == first_window.shape)
            for o, w, *_ in requests
        )

    @torch.no_grad()
    def _act_stacked(self, observations: list[dict], windows: list) -> np.ndarray:
        """`PolicyRunner.act` over a batch: the same steps, each per-sample draw made once per observation."""
        r = self.runner
        if r.world_state_names is not None:
            batch = model_inputs(r.preprocess, observations, None, r.world_frame_size)
            batch = batch.replace(world_frames=np.stack(windows).astype(np.float32))
        else:
            stacked = np.stack(windows) if r.uses_world else None
            batch = model_inputs(r.preprocess, observations, stacked, r.world_frame_size)
        batch = batch.to(r.device)
        if r.uses_world:
            batch = batch.replace(z_t=r.policy.world_encoder.encode(batch.world_frames), world_frames=None)
            if r._bank is not None:
                picks = r._eligible[r._rng.integers(len(r._eligible), size=len(observations))]
                batch = batch.replace(z_other=torch.as_tensor(r._bank[picks], dtype=torch.float32, device=r.device))
        actions = r.policy.predict_actions(batch, memory_mode=r.memory_mode, generator=r.generator)
        actions = actions.float().cpu().numpy()
        if r.binary_gripper:
            actions[..., -1] = np.where(actions[..., -1] >= 0, 1.0, -1.0)
        return actions
