"""The policy behind the server: a `PolicyRunner` asked for whole action chunks, one request or several stacked into
one forward pass, with each request checked first so that a bad one is refused before it reaches the model, and
each client episode drawing its noise from its own stream, as the same episode would locally."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch

from ..evaluate.remote import EPISODE_KEY, RESET_KEY, STEP_KEY, WORLD_KEY
from ..evaluate.runner import PolicyRunner, model_inputs

STATE_KEY, TASK_KEY = "observation.state", "task"
MAX_EPISODES = 4096  # episodes whose noise stream the server keeps; the least recently used goes first


class Request(NamedTuple):
    """A checked request: the observation (without its world window and episode keys), the window, and the
    client's episode and chunk index in it (None for a plain openpi request, which uses the shared stream)."""

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


class BadRequest(ValueError):
    """A request the policy cannot answer (a missing key, a wrong shape or dtype, a non-finite number)."""


def _array(obs: dict, key: str) -> np.ndarray:
    if key not in obs:
        raise BadRequest(f"the observation lacks {key!r} (it has {sorted(map(str, obs))}).")
    value = obs[key]
    if not isinstance(value, np.ndarray):
        raise BadRequest(f"{key!r} must be a numpy array, got {type(value).__name__}.")
    if value.dtype.kind not in "uif":
        raise BadRequest(f"{key!r} must hold numbers, got dtype {value.dtype}.")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise BadRequest(f"{key!r} holds NaN or infinite values.")
    return value


class BatchedPolicy:
    """A `PolicyRunner` at the chunk level for a server: `metadata()` for clients, `check(obs)` per request and
    `act_batch(observations)` -> one (chunk, action_dim) float32 array per observation. An observation is what
    `sim.LiberoEnv` gives (the dataset's cameras as (H, W, 3) uint8, `observation.state`, `task`) plus, for a
    policy that injects the world modality, `world_frames`: the runner's world window, (m, H, W, 3) uint8 frames or
    (m, D) states. Between requests only noise streams are kept: the runner's, shared by plain requests, and one
    per episode a client started with `reset_episode` (its requests name it and their chunk index)."""

    def __init__(self, runner: PolicyRunner):
        self.runner = runner
        self._episodes: OrderedDict[str, _Episode] = OrderedDict()
        from ..evaluate.folder import weights_sha256

        self._sha = weights_sha256(runner.checkpoint)  # once: clients compare it with the checkpoint they name
        r = runner
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
            "uses_world": bool(r.uses_world),
            "world_key": r.world_key,
            "num_frames": int(r.num_frames),
            "frame_stride": int(r.frame_stride),
            "replan_every": int(r.replan_every),
            "control_steps_per_frame": int(r.control_steps_per_frame),
            "world_frames_key": WORLD_KEY,
            "world_state_names": r.world_state_names,
            "image_size": int(r.cfg.data.image_size),
            "weights_sha256": self._sha,
        }

    def check_reset(self, message: dict) -> tuple[str, int, list[str]]:
        """A reset message's (episode, seed, instructions), or BadRequest."""
        body = message[RESET_KEY]
        if (
            not isinstance(body, dict)
            or not isinstance(body.get(EPISODE_KEY), str)
            or not isinstance(body.get("seed"), int)
            or not all(isinstance(t, str) for t in body.get("instructions", []))
        ):
            raise BadRequest(
                f"a reset needs {EPISODE_KEY!r} (a string), 'seed' (an int) and 'instructions' (strings), got {body!r}."
            )
        return body[EPISODE_KEY], body["seed"], list(body.get("instructions", []))

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
        """The checked request, or BadRequest saying what is wrong."""
        if not isinstance(obs, dict):
            raise BadRequest(f"a request must be a map of observation keys, got {type(obs).__name__}.")
        r = self.runner
        for key in r.image_keys:
            image = _array(obs, key)
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise BadRequest(f"camera {key!r} must be (H, W, 3) uint8, got {image.shape} {image.dtype}.")
        state = _array(obs, STATE_KEY)
        if state.ndim != 1:
            raise BadRequest(f"{STATE_KEY!r} must be one vector, got shape {state.shape}.")
        if not isinstance(obs.get(TASK_KEY), str):
            raise BadRequest(f"the observation needs {TASK_KEY!r}, the instruction as a string.")
        window = None
        if r.uses_world:
            window = _array(obs, WORLD_KEY)
            if r.world_state_names is not None:
                want = (r.num_frames, len(r.world_state_names))
                if window.shape != want:
                    raise BadRequest(f"{WORLD_KEY!r} must be {want} object states, got {window.shape}.")
            elif (
                window.ndim != 4 or window.shape[0] != r.num_frames or window.shape[-1] != 3 or window.dtype != np.uint8
            ):
                raise BadRequest(
                    f"{WORLD_KEY!r} must be ({r.num_frames}, H, W, 3) uint8, got {window.shape} {window.dtype}."
                )
        episode, step = obs.get(EPISODE_KEY), obs.get(STEP_KEY)
        if (episode is None) != (step is None) or not (
            episode is None or isinstance(episode, str) and isinstance(step, int)
        ):
            raise BadRequest(f"{EPISODE_KEY!r} (a string) and {STEP_KEY!r} (an int) come together or not at all.")
        rest = {k: v for k, v in obs.items() if k not in (WORLD_KEY, EPISODE_KEY, STEP_KEY)}
        return Request(rest, window, episode, step)

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
