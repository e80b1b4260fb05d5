"""The policy side of closed-loop evaluation: a checkpoint behind `act(observation, world_frames)`.

It uses the training code's own preprocessor and prompt builder (through `build_preprocessor`),
so what the policy sees in the simulator is what it saw in training: cameras are rendered at the
size the dataset recorded them (`render_sizes`) and go through the training frame cache's resize
(`data/frames.py:resize_frames`), the policy's cameras and the world encoder's frames alike.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.frames import render_size, resize_frames
from ..policy.checkpoint import load_checkpoint
from ..policy.device import batch_to, resolve_device
from ..policy.factory import build_preprocessor

CLOSED_LOOP_MEMORY = ("predicted", "zero", "random", "shuffle")


def model_inputs(preprocess, observations: list[dict], world_frames: np.ndarray | None, world_frame_size: int) -> dict:
    """Model inputs, on the CPU, of rendered observations (any size): the preprocessor's batch
    (cameras resized to image_size) and, when world_frames (B, m, H, W, 3) uint8 are given,
    `world_frames` resized to world_frame_size, the size the training latents were encoded from.
    bench/real_size.py times this same function."""
    batch = preprocess(observations)
    if world_frames is not None:
        batch["world_frames"] = resize_frames(np.asarray(world_frames), world_frame_size)
    return batch


class PolicyRunner:
    def __init__(self, checkpoint, memory_mode: str = "predicted", seed: int = 0, device: str = "auto"):
        from ..train import resolve_checkpoint

        if memory_mode not in CLOSED_LOOP_MEMORY:
            why = " (the true future depends on actions not yet taken; oracle is an offline ablation)" if memory_mode == "oracle" else ""
            raise ValueError(f"closed-loop memory mode must be one of {CLOSED_LOOP_MEMORY}, got {memory_mode!r}{why}.")
        self.device = resolve_device(device)
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.policy = load_checkpoint(self.checkpoint, self.device)
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
        # Training read every camera from the frame cache resized to image_size (pipeline.py: the
        # world camera too, before the encoder's own resize), from frames recorded at frame_size.
        # Checkpoints from before frame_size was recorded trained on data rendered at image_size.
        frame_size = self.policy.data_info.get("frame_size")
        cameras = self.image_keys + ((self.world_key,) if self.uses_world else ())
        self.render_sizes = {k: render_size(frame_size, k, cfg.data.image_size) for k in cameras}
        self.world_frame_size = cfg.data.image_size
        # On the policy's device: sampling noise (flow head, `random` memory) is drawn where it is used.
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
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

    def inputs(self, observation: dict, world_frames: np.ndarray | None = None) -> dict:
        """`model_inputs` of one observation and its (m, H, W, 3) world window."""
        if self.uses_world and world_frames is None:
            raise ValueError("this policy injects the world modality: act() needs the last m world frames.")
        window = np.asarray(world_frames)[None] if self.uses_world else None
        return model_inputs(self.preprocess, [observation], window, self.world_frame_size)

    @torch.no_grad()
    def act(self, observation: dict, world_frames: np.ndarray | None = None) -> np.ndarray:
        """observation in the dataset schema; world_frames (m, H, W, 3) uint8 -> (chunk, action_dim)."""
        batch = batch_to(self.inputs(observation, world_frames), self.device)
        if self.uses_world:
            # Handed over as uint8 numpy, as the latent cache does: the encoder's own resize runs
            # where it ran in training, then moves the frames to the encoder's device.
            batch["z_t"] = self.policy.world_encoder.encode(batch.pop("world_frames"))
            if self._bank is not None:
                batch["z_other"] = torch.as_tensor(self._bank[self._rng.integers(len(self._bank))][None], device=self.device)
        actions = self.policy.predict_actions(batch, memory_mode=self.memory_mode, generator=self.generator)[0]
        actions = actions.float().cpu().numpy()
        if self.binary_gripper:
            actions[:, -1] = np.where(actions[:, -1] >= 0, 1.0, -1.0)
        return actions
