"""A checkpoint behind the inference interface (`episode.EpisodeRunner`): `act`, one chunk, through the training
code's own preprocessor and prompt builder (through `build_preprocessor`), so what the policy sees in the simulator
is what it saw in training: cameras are rendered at the size the dataset recorded them (`render_sizes`) and go
through the training frame cache's resize (`images.py:resize_frames`), the policy's cameras and the world encoder's
frames alike."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ..data.env_state import ENV_STATE_KEY
from ..data.frames import render_size
from ..images import resize_frames
from ..policy.checkpoint import load_checkpoint
from ..policy.device import resolve_device
from ..policy.factory import build_preprocessor
from ..policy.types import Batch
from ..sim.render_profile import recorded_profile
from .episode import EpisodeRunner, check_temporal_ensemble


def _norm(instruction: str) -> str:
    """An instruction as compared between the dataset and the simulator: case and spacing ignored."""
    return " ".join(str(instruction).lower().split())


def model_inputs(preprocess, observations: list[dict], world_frames: np.ndarray | None, world_frame_size: int) -> Batch:
    """Model inputs, on the CPU, of rendered observations (any size): the preprocessor's batch
    (cameras resized to image_size) and, when world_frames (B, m, H, W, 3) uint8 are given,
    `world_frames` resized to world_frame_size, the size the training latents were encoded from.
    bench/real_size.py times this same function."""
    batch = preprocess(observations)
    if world_frames is not None:
        batch = batch.replace(world_frames=resize_frames(np.asarray(world_frames), world_frame_size))
    return batch


class PolicyRunner(EpisodeRunner):
    """A checkpoint acting in closed loop with one memory mode (`config.CLOSED_LOOP_MEMORY_MODES`); by default
    (None) the mode it was trained with, `cfg.policy.memory_mode`. Memory `shuffle` replaces the
    policy's predicted future with the true future latent of a training frame whose instruction is
    not the evaluated task's (`reset(seed, instructions)`); the bank of those latents is built when the runner is.
    The episode methods (`reset`, `select_action`, `needs_*`, `world_input`, `temporal_ensemble`) are
    `EpisodeRunner`'s."""

    def __init__(
        self,
        checkpoint,
        memory_mode: str | None = None,
        seed: int = 0,
        device: str = "auto",
        replan_every: int | None = None,
        temporal_ensemble: float | None = None,
    ):
        from ..config import check_memory_mode
        from ..policy.checkpoint_store import resolve_checkpoint

        self.temporal_ensemble = check_temporal_ensemble(temporal_ensemble)  # before the checkpoint loads
        if memory_mode is not None:
            check_memory_mode(memory_mode, "closed-loop")
        self.device = resolve_device(device)
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.policy = load_checkpoint(self.checkpoint, self.device)
        cfg = self.policy.cfg
        memory_mode = memory_mode or cfg.policy.memory_mode
        if not self.policy.use_memory and memory_mode != "predicted":
            raise ValueError(
                f"memory mode {memory_mode!r} needs a policy with future injection; this one has none (E0)."
            )
        self.cfg, self.memory_mode = cfg, memory_mode
        self.preprocess = build_preprocessor(cfg, self.policy)
        self.uses_world = self.policy.use_memory
        self.num_frames, self.frame_stride = cfg.world.num_frames, cfg.world.frame_stride
        self.world_key = cfg.world.world_image_key
        # World encoder `env_state`: the window is the simulator's object state (env.environment_state()) in the
        # layout the encoder was fitted on, read at the frames an image encoder would have rendered.
        self.world_state_names: list[str] | None = None
        if self.uses_world and self.policy.world_encoder.name == "env_state":
            self.world_key, self.world_state_names = ENV_STATE_KEY, list(self.policy.world_encoder.names)
        self.image_keys = cfg.data.image_keys
        self.chunk_size = cfg.policy.chunk_size
        self.control_steps_per_frame = int(self.policy.data_info.get("control_steps_per_frame", 1))
        self.binary_gripper = bool(self.policy.data_info.get("binary_gripper", False))
        # The camera settings the training frames were rendered with; checkpoints from before profiles: LIBERO's.
        self.render_profile = recorded_profile(self.policy.data_info)
        # Training read every camera from the frame cache resized to image_size (pipeline.py: the
        # world camera too, before the encoder's own resize), from frames recorded at frame_size.
        # Checkpoints from before frame_size was recorded trained on data rendered at image_size.
        frame_size = self.policy.data_info.get("frame_size")
        cameras = self.image_keys + ((self.world_key,) if self.uses_world and self.world_state_names is None else ())
        self.render_sizes = {k: render_size(frame_size, k, cfg.data.image_size) for k in cameras}
        self.world_frame_size = cfg.data.image_size
        # On the policy's device: sampling noise (flow head, `random` memory) is drawn where it is used.
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        self._bank: np.ndarray | None = None  # (N, latent_dim) memories `shuffle` draws from
        self._bank_task = np.zeros(0, np.int64)  # per bank entry: its instruction, an index into _bank_names
        self._bank_names: list[str] = []
        if memory_mode == "shuffle":
            self._bank, self._bank_task, self._bank_names = self._shuffle_bank()
        self._eligible = np.arange(0 if self._bank is None else len(self._bank))
        self.replan_every = replan_every or max(1, self.chunk_size // 2)
        self._clear_episode()

    def _shuffle_bank(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """True future latents of the training frames, with each frame's instruction (as codes
        into a list of normalised instructions): `shuffle` gives the policy one of them, the
        memory of a sample of another task, in place of its own prediction."""
        from ..pipeline import training_memories

        latents, instructions = training_memories(self.cfg, self.policy.world_encoder, progress=False)
        names, codes = np.unique([_norm(t) for t in instructions], return_inverse=True)
        return latents, codes.astype(np.int64), [str(n) for n in names]

    def reset(self, seed: int = 0, instructions: Iterable[str] = (), replan_every: int | None = None) -> None:
        """`EpisodeRunner.reset`, then reseed, and (memory `shuffle`) name the instructions of the task being
        evaluated, so that `act` draws only memories of training frames of other instructions.
        Where the bank holds no other instruction (a dataset of one task, or none given, the
        default) every entry stays eligible: the memory then comes from any training frame,
        possibly of this very task. Instructions match after lower-casing and collapsing spaces."""
        super().reset(seed, instructions, replan_every)
        self.generator.manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        if self._bank is not None:
            if isinstance(instructions, str):  # one instruction, not its characters
                instructions = (instructions,)
            own = {_norm(t) for t in instructions if t}
            own_codes = [i for i, name in enumerate(self._bank_names) if name in own]
            others = np.flatnonzero(~np.isin(self._bank_task, own_codes))
            self._eligible = others if len(others) else np.arange(len(self._bank))

    def inputs(self, observation: dict, world_frames: np.ndarray | None = None) -> Batch:
        """`model_inputs` of one observation and its world window: (m, H, W, 3) frames, or (m, D) states."""
        if self.uses_world and world_frames is None:
            raise ValueError("this policy injects the world modality: act() needs the last m world frames.")
        if self.world_state_names is not None:
            batch = model_inputs(self.preprocess, [observation], None, self.world_frame_size)
            # states: nothing to resize
            return batch.replace(world_frames=np.asarray(world_frames, dtype=np.float32)[None])
        window = np.asarray(world_frames)[None] if self.uses_world else None
        return model_inputs(self.preprocess, [observation], window, self.world_frame_size)

    @torch.no_grad()
    def act(self, observation: dict, world_frames: np.ndarray | None = None) -> np.ndarray:
        """observation in the dataset schema; world_frames (m, H, W, 3) uint8 -> (chunk, action_dim)."""
        batch = self.inputs(observation, world_frames).to(self.device)
        if self.uses_world:
            # Handed over as uint8 numpy, as the latent cache does: the encoder's own resize runs
            # where it ran in training, then moves the frames to the encoder's device.
            batch = batch.replace(z_t=self.policy.world_encoder.encode(batch.world_frames), world_frames=None)
            if self._bank is not None:
                pick = self._eligible[self._rng.integers(len(self._eligible))]
                batch = batch.replace(
                    z_other=torch.as_tensor(self._bank[pick][None], dtype=torch.float32, device=self.device)
                )
        actions = self.policy.predict_actions(batch, memory_mode=self.memory_mode, generator=self.generator)[0]
        actions = actions.float().cpu().numpy()
        if self.binary_gripper:
            actions[:, -1] = np.where(actions[:, -1] >= 0, 1.0, -1.0)
        return actions
