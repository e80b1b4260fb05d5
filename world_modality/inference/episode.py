"""LeRobot's inference shape over any source of action chunks: `reset()` at an episode's start, then
`select_action(observation, world_frame)` once per frame, one action from an internal action queue."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import numpy as np

from ..data.env_state import align
from .schedule import is_replan_frame, is_world_frame, world_window


def check_temporal_ensemble(m) -> float | None:
    """ACT's temporal-ensemble weight m as a float, None (off) kept; anything but a finite number >= 0 is a
    ValueError naming it."""
    if m is None:
        return None
    number = isinstance(m, (int, float, np.integer, np.floating)) and not isinstance(m, (bool, np.bool_))
    if not number or not math.isfinite(m) or m < 0:
        raise ValueError(
            f"temporal_ensemble must be a finite number >= 0 (ACT's weight m, e.g. 0.01) or None (off), got {m!r}."
        )
    return float(m)


class EpisodeRunner:
    """A policy acting in episodes, one action per dataset frame, from the chunks its `act(observation,
    world_frames) -> (chunk, action_dim)` predicts. A subclass gives `act` and sets what the episode methods and
    a closed loop read: `chunk_size`, `replan_every`, `image_keys`, `render_sizes` and `render_profile` (the
    cameras to render and how), `control_steps_per_frame`, `binary_gripper`, `uses_world`, `world_key`,
    `world_state_names` (an `env_state` encoder's layout, else None), `num_frames`, `frame_stride`, and `cfg`
    (at least `cfg.data.image_size`); `PolicyRunner` (a checkpoint loaded here) and `RemoteRunner` (a policy
    server's) are the two.

    An episode calls two methods: `reset(seed, instructions)` at its start, then `select_action(observation,
    world_frame)` once per dataset frame (each action is held for `control_steps_per_frame` control steps).
    A new chunk is predicted when the action queue is empty, every `replan_every` frames (default half a chunk).
    Only those frames need the observation, and only the frames of the world window a chunk will see need a
    world frame: `needs_observation` and `needs_world_frame` say so for the next call, so a loop renders
    nothing else (pass None then). A user's own loop over a `sim.LiberoEnv`:

        runner.reset(seed, instructions=env.task)
        obs = env.reset(init_index)
        while True:
            world = runner.world_input(env, obs) if runner.needs_world_frame else None
            action = runner.select_action(obs, world)
            for _ in range(runner.control_steps_per_frame):
                _, done, success, _ = env.step(action)
                if done:
                    break
            if done:
                break
            obs = env.observe() if runner.needs_observation else None

    Passing the observation and the world frame on every call is always allowed (what is not needed is
    ignored or dropped once no later window reaches it).

    `temporal_ensemble` m (ACT's temporal ensembling, Zhao et al. 2023; None: off) still predicts a chunk every
    `replan_every` frames, but each frame's action is the mean of what every chunk still covering it predicted
    for it, weighted exp(-m i) with i = 0 the oldest (a binary gripper snapped to +-1 after the mean)."""

    temporal_ensemble: float | None = None  # a runner made without __init__ (a test's scripted one) ensembles nothing

    def act(self, observation: dict, world_frames: np.ndarray | None = None) -> np.ndarray:
        """observation in the dataset schema; world_frames the window (m, H, W, 3) uint8 or (m, D) states ->
        (chunk, action_dim)."""
        raise NotImplementedError(f"{type(self).__name__} predicts no chunks: a runner defines act().")

    def _clear_episode(self) -> None:
        self._queue: deque[np.ndarray] = deque()  # actions of the current chunk not yet handed out
        self._chunks: list[tuple[int, np.ndarray]] = []  # temporal ensemble: (first frame, chunk) still covering
        self._frame = 0  # dataset frames since reset: the index of the next select_action call
        self._world: dict[int, np.ndarray] = {}  # world frames by frame index, kept while a window reaches them

    def reset(self, seed: int = 0, instructions: Iterable[str] = (), replan_every: int | None = None) -> None:
        """Start an episode: empty the action queue, the chunks a temporal ensemble keeps and the world window,
        and set `replan_every` when given. A subclass reseeds its noise from `seed` and may use `instructions`
        (the task evaluated, in any spelling the dataset or the simulator uses)."""
        if replan_every is not None:
            if not 1 <= replan_every <= self.chunk_size:
                raise ValueError(f"replan_every must be in [1, chunk_size={self.chunk_size}], got {replan_every}.")
            self.replan_every = replan_every
        self._clear_episode()

    def world_input(self, env, observation: dict | None = None) -> np.ndarray:
        """One frame of the world window from a `sim.LiberoEnv`: the world camera (from `observation` when it
        holds it, else rendered), or for `env_state` the object state in the layout the encoder was fitted on
        (an object the training scenes lacked is an error, one this scene lacks is 0 as in training)."""
        if self.world_state_names is None:
            return observation[self.world_key] if observation is not None else env.render(self.world_key)
        return align(
            env.environment_state(),
            env.environment_state_names(),
            self.world_state_names,
            f"{env.suite} task {env.task_id}'s",
        )

    @property
    def needs_observation(self) -> bool:
        """The next `select_action` predicts a new chunk, so it needs the observation."""
        if self.temporal_ensemble is None:
            return not self._queue
        return is_replan_frame(self._frame, self.replan_every)

    @property
    def needs_world_frame(self) -> bool:
        """The next frame lies in the world window of a chunk to come, so `select_action` needs its world frame."""
        return self.uses_world and is_world_frame(self._frame, self.replan_every, self.num_frames, self.frame_stride)

    def select_action(self, observation: dict | None, world_frame: np.ndarray | None = None) -> np.ndarray:
        """The action for this frame, (action_dim,): the next one of the queue, which is refilled with the first
        `replan_every` actions of a new chunk when it is empty (with `temporal_ensemble`: the ensemble of the
        chunks covering the frame). `world_frame` is `world_input(env, observation)` of this frame (needed when
        `needs_world_frame`)."""
        frame = self._frame
        if world_frame is not None and self.uses_world:
            self._world[frame] = world_frame
        elif self.needs_world_frame:
            raise ValueError(f"frame {frame} is in a world window: select_action needs its world frame.")
        if self.needs_observation:
            chunk = self._predict(frame, observation)
            if self.temporal_ensemble is None:
                self._queue.extend(chunk[: self.replan_every])
            else:
                self._chunks.append((frame, chunk))
        self._frame += 1
        # Keep only frames a later window can still reach (and frame 0, which early windows repeat).
        oldest = self._frame - (self.num_frames - 1) * self.frame_stride - self.replan_every
        for f in [f for f in self._world if 0 < f < oldest]:
            del self._world[f]
        return self._queue.popleft() if self.temporal_ensemble is None else self._ensembled(frame)

    def _predict(self, frame: int, observation: dict | None) -> np.ndarray:
        """The chunk predicted at `frame` from its observation and the world window ending there."""
        if observation is None:
            raise ValueError(f"frame {frame} starts a new chunk: select_action needs the observation.")
        window = world_window(frame, self.num_frames, self.frame_stride)
        frames = np.stack([self._world[f] for f in window]) if self.uses_world else None
        return self.act(observation, frames)

    def _ensembled(self, frame: int) -> np.ndarray:
        """ACT's temporal ensemble for `frame`: the chunks covering it, oldest first, averaged with weights
        exp(-m i); a binary gripper is snapped after the mean, as `act` snaps it."""
        self._chunks = [(start, c) for start, c in self._chunks if frame < start + len(c)]
        if not self._chunks:
            raise ValueError(
                f"frame {frame} is covered by no predicted chunk: replan_every ({self.replan_every}) must be "
                f"at most chunk_size ({self.chunk_size}) with temporal_ensemble."
            )
        actions = np.stack([np.asarray(c[frame - start]) for start, c in self._chunks])
        weights = np.exp(-self.temporal_ensemble * np.arange(len(actions)))
        action = np.average(actions, axis=0, weights=weights).astype(actions.dtype)
        if self.binary_gripper:
            action[-1] = 1.0 if action[-1] >= 0 else -1.0
        return action
