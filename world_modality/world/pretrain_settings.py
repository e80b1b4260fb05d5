"""What `world-modality pretrain-world` is asked to do: the settings, their checks, and which of them a rerun may
change. Below both the training loop (pretrain.py) and what it writes (pretrain_checkpoint.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ConfigError, DataConfig, WorldConfig
from .vjepa2_loading import tiny_vjepa2_config

# Settings a rerun may change: they change how long or how fast it runs, not what a step computes. The
# schedule (linear warm-up, then constant) does not depend on `steps`, so N steps then M equal M steps.
RESUMABLE = ("steps", "save_every", "num_threads", "dataset")


@dataclass(frozen=True)
class PretrainSettings:
    dataset: str
    world_image_key: str = WorldConfig.world_image_key
    image_size: int = DataConfig.image_size  # side the frames are read at: the pipeline's --image_size
    world_image_size: int = WorldConfig.world_image_size  # the encoder's input side (its crop)
    latent_suffix: str = WorldConfig.latent_suffix  # m frames per window, "m<m>"
    frame_stride: int = WorldConfig.frame_stride
    val_fraction: float = DataConfig.val_fraction  # episodes held out, as the pipeline holds them out
    instruction_key: str = DataConfig.instruction_key
    episode_id_key: str = DataConfig.episode_id_key
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup_steps: int = 100
    ema: float = 0.996
    seed: int = 0
    save_every: int = 250
    num_threads: int = 0  # 0: half the cores, as training

    @property
    def num_frames(self) -> int:
        return int(self.latent_suffix[1:])

    def check(self) -> None:
        """Bad values named before any frame is decoded; the window and size rules are WorldConfig's own."""
        WorldConfig(
            latent_suffix=self.latent_suffix,
            frame_stride=self.frame_stride,
            world_image_size=self.world_image_size,
            world_image_key=self.world_image_key,
        )
        DataConfig(image_size=self.image_size, val_fraction=self.val_fraction)
        rules = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "warmup_steps": self.warmup_steps >= 0,
            "save_every": self.save_every >= 1,
            "num_threads": self.num_threads >= 0,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "weight_decay": math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "ema": math.isfinite(self.ema) and 0 <= self.ema < 1,
        }
        for name, ok in rules.items():
            if not ok:
                raise ConfigError(
                    f"`{name}` {getattr(self, name)!r} is out of range (steps, batch_size, save_every "
                    f">= 1; warmup_steps, num_threads >= 0; lr > 0; weight_decay >= 0; 0 <= ema < 1)."
                )
        cfg = tiny_vjepa2_config(self.num_frames, self.world_image_size)
        if self.num_frames % cfg.tubelet_size:
            raise ConfigError(
                f"`latent_suffix` {self.latent_suffix}: m must be a multiple of the encoder's "
                f"tubelet_size {cfg.tubelet_size}."
            )
        if self.world_image_size % cfg.patch_size:
            raise ConfigError(
                f"`world_image_size` {self.world_image_size} must be a multiple of the encoder's "
                f"patch_size {cfg.patch_size}."
            )
