"""The policy side of closed-loop evaluation: a checkpoint behind `act(observation, world_frames)`.

It uses the training code's own preprocessor and prompt builder (through `build_preprocessor`),
so what the policy sees in the simulator is what it saw in training.
"""

from __future__ import annotations

import numpy as np
import torch

from ..policy.checkpoint import load_checkpoint
from ..policy.factory import build_preprocessor

CLOSED_LOOP_MEMORY = ("predicted", "zero", "random", "shuffle")


class PolicyRunner:
    def __init__(self, checkpoint, memory_mode: str = "predicted", seed: int = 0):
        from ..train import resolve_checkpoint

        if memory_mode not in CLOSED_LOOP_MEMORY:
            why = " (the true future depends on actions not yet taken; oracle is an offline ablation)" if memory_mode == "oracle" else ""
            raise ValueError(f"closed-loop memory mode must be one of {CLOSED_LOOP_MEMORY}, got {memory_mode!r}{why}.")
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.policy = load_checkpoint(self.checkpoint)
        cfg = self.policy.cfg
        if not self.policy.use_memory and memory_mode != "predicted":
            raise ValueError(f"memory mode {memory_mode!r} needs a policy with future injection; this one has none (E0).")
        self.cfg, self.memory_mode = cfg, memory_mode
        self.preprocess = build_preprocessor(cfg, self.policy)
        self.uses_world = self.policy.use_memory
        self.num_frames, self.frame_stride = cfg.world.num_frames, cfg.world.frame_stride
        self.world_key = cfg.world.world_image_key
        self.image_keys = cfg.data.image_keys
        self.chunk_size = cfg.policy.chunk_size
        self.control_steps_per_frame = int(self.policy.data_info.get("control_steps_per_frame", 1))
        self.binary_gripper = bool(self.policy.data_info.get("binary_gripper", False))
        self.generator = torch.Generator().manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        self._bank = self._shuffle_bank() if memory_mode == "shuffle" else None

    def _shuffle_bank(self) -> np.ndarray:
        """True future latents of the training frames: `shuffle` gives the policy one of them,
        the memory of another sample, in place of its own prediction."""
        from ..pipeline import prepare_data

        data = prepare_data(self.cfg, self.policy.world_encoder, progress=False)
        return data.latents.latents[data.future_rows[data.train_rows]]

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self._rng = np.random.default_rng(seed)

    @torch.no_grad()
    def act(self, observation: dict, world_frames: np.ndarray | None = None) -> np.ndarray:
        """observation in the dataset schema; world_frames (m, H, W, 3) uint8 -> (chunk, action_dim)."""
        batch = self.preprocess([observation])
        if self.uses_world:
            if world_frames is None:
                raise ValueError("this policy injects the world modality: act() needs the last m world frames.")
            batch["z_t"] = self.policy.world_encoder.encode(np.asarray(world_frames)[None])
            if self._bank is not None:
                batch["z_other"] = torch.as_tensor(self._bank[self._rng.integers(len(self._bank))][None])
        actions = self.policy.predict_actions(batch, memory_mode=self.memory_mode, generator=self.generator)[0].numpy()
        if self.binary_gripper:
            actions[:, -1] = np.where(actions[:, -1] >= 0, 1.0, -1.0)
        return actions
