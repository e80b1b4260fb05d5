"""The experiment config: one frozen dataclass per section (data, world, policy, train), each field checked
when it is made; `ExperimentConfig` holds the four and reads/writes config.json."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import (
    ACTION_HEADS,
    BACKBONE_DTYPES,
    BACKBONES,
    DEFAULT_LORA_TARGETS,
    FLOW_TIME_SAMPLING,
    WORLD_ENCODER_DTYPES,
    WORLD_ENCODERS,
    ConfigError,
    check,
    check_finite,
    check_memory_mode,
)


@dataclass(frozen=True)
class DataConfig:
    # Input dataset
    dataset: str = ""  # root of a LeRobot v3-layout dataset on local disk
    instruction_key: str = "task"  # column with the instruction; `task` resolves through task_index
    episode_id_key: str = "episode_index"  # column that names each frame's episode
    state_key: str = "observation.state"  # proprioceptive state column
    action_key: str = "action"  # action column
    image_keys: tuple[str, ...] = ("observation.images.image", "observation.images.wrist_image")
    image_size: int = 128  # side of the square images the policy sees
    # Held-out split
    val_fraction: float = 0.1  # share of episodes held out for eval-offline (at least one)
    # Chain-of-causation annotations (E4)
    coc_jsonl: str | None = None  # JSONL of {episode_index, frame_index, text}

    def __post_init__(self) -> None:
        check_finite(self)
        object.__setattr__(self, "image_keys", tuple(self.image_keys))  # a JSON list or flag list, kept as a tuple
        check(len(self.image_keys) >= 1, "`image_keys` must name at least one camera, got none.")
        check(16 <= self.image_size <= 1024, f"`image_size` must be in [16, 1024], got {self.image_size}.")
        check(0.0 < self.val_fraction < 1.0, f"`val_fraction` must be in (0, 1), got {self.val_fraction}.")


@dataclass(frozen=True)
class WorldConfig:
    # World encoder (frozen)
    # tiny-vjepa2 (random init, embedded default) | vjepa2 | env_state (privileged object state, world/env_state.py)
    world_encoder: str = "tiny-vjepa2"
    world_encoder_path: str | None = None  # local path or hub-cache id of a VJEPA2Model
    world_encoder_dtype: str = "auto"  # auto (bfloat16 for vjepa2 on CUDA, else float32) | float32 | bfloat16 | float16
    world_image_key: str = "observation.images.image"  # camera the world encoder watches
    world_image_size: int = 64  # encoder input side
    latent_suffix: str = "m4"  # m frames per latent, written "m<m>"
    # dataset frames between the m frames; = the replanning interval, so evaluation renders nothing extra
    frame_stride: int = 4
    # N spatial world tokens (a perfect square): the encoder's token map averaged over time, then pooled to a √N×√N
    # grid; the latent is the N tokens concatenated (N·D). 1: the mean over all tokens, as before the option existed.
    world_tokens: int = 1
    # Prophet
    future_offset: int = 4  # k: predict z_{t+k}, in dataset frames
    delta_prediction: bool = False  # predict δ = z_{t+k} − z_t instead of z_{t+k}
    lambda_world: float = 0.0  # weight of the world loss
    prophet_hidden: int = 256  # Prophet MLP width
    latent_cache_dir: str | None = None  # default: <dataset>/.cache/latents, else (read-only dataset) the user's cache

    @property
    def num_frames(self) -> int:
        return int(self.latent_suffix[1:])

    def __post_init__(self) -> None:
        check_finite(self)
        check(
            isinstance(self.latent_suffix, str) and re.fullmatch(r"m[1-9][0-9]*", self.latent_suffix) is not None,
            f"`latent_suffix` must look like 'm4' (m frames per latent), got {self.latent_suffix!r}.",
        )
        check(self.frame_stride >= 1, f"`frame_stride` must be >= 1, got {self.frame_stride}.")
        check(self.future_offset >= 1, f"`future_offset` must be >= 1, got {self.future_offset}.")
        check(
            isinstance(self.world_tokens, int)
            and self.world_tokens >= 1
            and math.isqrt(self.world_tokens) ** 2 == self.world_tokens,
            f"`world_tokens` must be a perfect square >= 1 (a √N×√N grid of the encoder's patches: 1, 4, 9, "
            f"...), got {self.world_tokens!r}.",
        )
        check(self.lambda_world >= 0, f"`lambda_world` must be >= 0, got {self.lambda_world}.")
        check(
            16 <= self.world_image_size <= 1024,
            f"`world_image_size` must be in [16, 1024], got {self.world_image_size}.",
        )
        check(self.prophet_hidden >= 1, f"`prophet_hidden` must be >= 1, got {self.prophet_hidden}.")
        check(
            self.world_encoder in WORLD_ENCODERS,
            f"`world_encoder` must be one of {WORLD_ENCODERS}, got {self.world_encoder!r}.",
        )
        check(
            self.world_encoder != "env_state" or not self.world_encoder_path,
            f"`world_encoder` 'env_state' reads the dataset's observation.environment_state and has no weights; "
            f"got `world_encoder_path` {self.world_encoder_path!r}.",
        )
        check(
            self.world_encoder != "env_state" or self.world_tokens == 1,
            f"`world_encoder` 'env_state' is a state vector with no spatial token map; `world_tokens` must be 1 "
            f"with it, got {self.world_tokens}.",
        )
        check(
            self.world_encoder_dtype in WORLD_ENCODER_DTYPES,
            f"`world_encoder_dtype` must be auto, float32, bfloat16 or float16, got {self.world_encoder_dtype!r}.",
        )
        check(
            self.world_encoder != "vjepa2" or bool(self.world_encoder_path),
            "`world_encoder` 'vjepa2' needs `world_encoder_path` (a local path or hub-cache id).",
        )


# tiny_width is split over the tiny Qwen's 4 attention heads, and tiny_qwen_config halves each head's dim for the
# rotary embedding (which turns pairs of dimensions) before splitting it over time/height/width: the head dim must
# be even. Steps of 16 (head dims 4, 8, 12, ...) keep that with room to spare.
TINY_WIDTH_UNIT = 16
# The embedded tiny-qwen2.5-vl's size (policy/backbone.py's TinyQwenSize); other backbones must leave these alone.
TINY_DEFAULTS = {"tiny_width": 128, "tiny_depth": 2}


def _is_int(value: Any) -> bool:
    # bool is an int subclass, and a JSON 64.0 would build a model with a float width.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PolicyConfig:
    # Backbone
    backbone: str = "tiny-qwen2.5-vl"  # tiny-qwen2.5-vl (embedded default) | qwen2.5-vl | tiny-smolvlm | smolvlm
    backbone_path: str | None = None  # local path or hub-cache id of the VLM
    backbone_dtype: str = "float32"  # float32 | bfloat16 | float16 (weights of the VLM; bfloat16 for GPUs)
    # Size of tiny-qwen2.5-vl only (the defaults are the embedded model; other backbones take theirs from weights)
    tiny_width: int = 128  # language model's hidden size; its MLP is 2x; a positive multiple of TINY_WIDTH_UNIT
    tiny_depth: int = 2  # language-model layers, >= 1
    # Finetuning settings
    freeze_backbone: bool = False  # freeze every backbone weight (LoRA adapters still train)
    use_lora: bool = False  # add LoRA adapters to the language model's attention projections
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_target: str | None = None  # regex on module names; default: the family's language-model attention
    # Action path
    n_act_tokens: int = 4  # learned ACT query tokens read out after the prompt
    chunk_size: int = 8  # actions predicted per call
    action_head: str = "mse"  # mse | flow
    flow_steps: int = 10  # Euler steps at inference (flow head)
    flow_time_sampling: str = "beta"  # uniform | beta (pi0's schedule)
    # World modality
    disable_future_injection: bool = False  # remove the cross-attention branch (E0)
    n_memory_tokens: int = 4  # tokens the future latent is projected to
    # What the action path sees in training and, by default, in evaluation: predicted (the Prophet's ẑ_{t+k}) or
    # present (z_t: history without foresight, E2-Present); the other modes are evaluation ablations.
    memory_mode: str = "predicted"
    # Text head (E4)
    lambda_text: float = 0.0  # weight of the chain-of-causation text loss
    max_text_tokens: int = 48

    def __post_init__(self) -> None:
        check_finite(self)
        check(self.backbone in BACKBONES, f"`backbone` must be one of {BACKBONES}, got {self.backbone!r}.")
        check(
            self.backbone.startswith("tiny-") or bool(self.backbone_path),
            f"`backbone` {self.backbone!r} needs `backbone_path` (a local path or hub-cache id).",
        )
        check(
            self.backbone_dtype in BACKBONE_DTYPES,
            f"`backbone_dtype` must be one of {BACKBONE_DTYPES}, got {self.backbone_dtype!r}.",
        )
        check(
            _is_int(self.tiny_width) and self.tiny_width >= TINY_WIDTH_UNIT and self.tiny_width % TINY_WIDTH_UNIT == 0,
            f"`tiny_width` must be a positive multiple of {TINY_WIDTH_UNIT}, got {self.tiny_width!r}: the tiny Qwen "
            f"splits it over 4 attention heads, whose head dim (tiny_width / 4) must then be a multiple of 4, "
            f"an even number the rotary embedding can halve into pairs of dimensions.",
        )
        check(
            _is_int(self.tiny_depth) and self.tiny_depth >= 1,
            f"`tiny_depth` (language-model layers) must be an integer >= 1, got {self.tiny_depth!r}.",
        )
        resized = {k: getattr(self, k) for k, v in TINY_DEFAULTS.items() if getattr(self, k) != v}
        check(
            self.backbone == "tiny-qwen2.5-vl" or not resized,
            f"`tiny_width` and `tiny_depth` size the tiny-qwen2.5-vl backbone only: got "
            f"{', '.join(f'`{k}` {v}' for k, v in resized.items())} with `backbone` {self.backbone!r} (whose size "
            f"comes from its own config); expected the default {', '.join(f'{k}={TINY_DEFAULTS[k]}' for k in resized)}"
            ".",
        )
        check(
            self.action_head in ACTION_HEADS, f"`action_head` must be one of {ACTION_HEADS}, got {self.action_head!r}."
        )
        check_memory_mode(self.memory_mode, "training")
        check(
            self.memory_mode == "predicted" or not self.disable_future_injection,
            f"`memory_mode` {self.memory_mode!r} needs the memory branch, which `disable_future_injection` "
            f"removes (E0); expected the default 'predicted' there.",
        )
        check(
            self.flow_time_sampling in FLOW_TIME_SAMPLING,
            f"`flow_time_sampling` must be one of {FLOW_TIME_SAMPLING}, got {self.flow_time_sampling!r}.",
        )
        check(self.n_act_tokens >= 1, f"`n_act_tokens` must be >= 1, got {self.n_act_tokens}.")
        check(self.chunk_size >= 1, f"`chunk_size` must be >= 1, got {self.chunk_size}.")
        check(self.n_memory_tokens >= 1, f"`n_memory_tokens` must be >= 1, got {self.n_memory_tokens}.")
        check(self.flow_steps >= 1, f"`flow_steps` must be >= 1, got {self.flow_steps}.")
        check(self.lora_rank >= 1, f"`lora_rank` must be >= 1, got {self.lora_rank}.")
        check(self.lora_alpha >= 1, f"`lora_alpha` must be >= 1, got {self.lora_alpha}.")
        check(self.lambda_text >= 0, f"`lambda_text` must be >= 0, got {self.lambda_text}.")
        check(self.max_text_tokens >= 1, f"`max_text_tokens` must be >= 1, got {self.max_text_tokens}.")

    @property
    def backbone_family(self) -> str:
        """The model family (chat format, module names) shared by a tiny variant and the real one."""
        return self.backbone.removeprefix("tiny-")

    def resolved_lora_target(self) -> str:
        return self.lora_target or DEFAULT_LORA_TARGETS[self.backbone_family]


LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/experiment"  # run folder: config, logs, checkpoints
    batch_size: int = 8
    max_epochs: int = 5
    lr: float = 3e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    save_every_steps: int = 0  # extra mid-epoch checkpoints; 0 = only at epoch ends
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    resume: bool = True  # continue from the newest checkpoint in output_dir
    num_threads: int = 0  # CPU threads for torch; 0 = half the cores (OpenMP stalls badly when oversubscribed)
    augment_shift: int = 8  # random image shift in pixels (training only; 0 = off): small-data BC overfits without it
    tensorboard: bool = True
    # Collective timeout of several processes: the others wait this long while the main one builds
    # the caches (V-JEPA 2 on the public LIBERO sets takes hours; `world-modality encode` first avoids it).
    dist_timeout_minutes: int = 360
    num_workers: int = 0  # DataLoader worker processes assembling batches; 0 = in the training process
    prefetch_factor: int = 2  # batches each worker builds ahead
    warmup_steps: int = 0  # optimizer updates of linear learning-rate warmup
    lr_schedule: str = "constant"  # after warmup: constant, or cosine decay to 0 at the last update
    grad_accum_steps: int = 1  # batches whose gradients add up to one optimizer update
    ema_decay: float = 0.0  # EMA of the trainable weights, what evaluation loads (0 = off; openpi uses 0.99)
    val_loss: bool = True  # held-out validation loss at each epoch end

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"`batch_size` must be >= 1, got {self.batch_size}.")
        check(self.num_workers >= 0, f"`num_workers` must be >= 0, got {self.num_workers}.")
        check(self.prefetch_factor >= 1, f"`prefetch_factor` must be >= 1, got {self.prefetch_factor}.")
        check(self.warmup_steps >= 0, f"`warmup_steps` must be >= 0, got {self.warmup_steps}.")
        check(
            self.lr_schedule in LR_SCHEDULES,
            f"`lr_schedule` must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}.",
        )
        check(self.grad_accum_steps >= 1, f"`grad_accum_steps` must be >= 1, got {self.grad_accum_steps}.")
        check(0.0 <= self.ema_decay < 1.0, f"`ema_decay` must be in [0, 1) (0 = off), got {self.ema_decay}.")
        check(self.max_epochs >= 1, f"`max_epochs` must be >= 1, got {self.max_epochs}.")
        # Before check_finite, so `--lr inf` (which trained to a NaN "final checkpoint") names the rule.
        check(math.isfinite(self.lr) and self.lr > 0, f"`lr` must be a finite number > 0, got {self.lr}.")
        check_finite(self)
        check(self.weight_decay >= 0, f"`weight_decay` must be >= 0, got {self.weight_decay}.")
        check(self.grad_clip >= 0, f"`grad_clip` must be >= 0 (0 = no clipping), got {self.grad_clip}.")
        check(
            self.save_every_steps >= 0,
            f"`save_every_steps` must be >= 0 (0 = only at epoch ends), got {self.save_every_steps}.",
        )
        check(self.keep_checkpoints >= 1, f"`keep_checkpoints` must be >= 1, got {self.keep_checkpoints}.")
        check(self.num_threads >= 0, f"`num_threads` must be >= 0, got {self.num_threads}.")
        check(self.augment_shift >= 0, f"`augment_shift` must be >= 0 pixels, got {self.augment_shift}.")
        check(self.dist_timeout_minutes >= 1, f"`dist_timeout_minutes` must be >= 1, got {self.dist_timeout_minutes}.")


@dataclass(frozen=True)
class ExperimentConfig:
    preset: str | None = None  # the preset this config started from, if any
    data: DataConfig = field(default_factory=DataConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check(
            self.policy.lambda_text == 0 or bool(self.data.coc_jsonl),
            f"`lambda_text` {self.policy.lambda_text} > 0 needs `coc_jsonl` (the annotation file).",
        )

    def replace(self, **fields: Any) -> ExperimentConfig:
        """A new config with these fields (flat names, as the flags) changed, each section rebuilt with
        `dataclasses.replace`, so every check runs again; the config itself never changes."""
        unknown = sorted(set(fields) - set(FIELD_SECTION))
        check(not unknown, f"unknown config fields {unknown}.")
        sections = {
            name: dataclasses.replace(
                getattr(self, name), **{k: v for k, v in fields.items() if FIELD_SECTION[k] == name}
            )
            for name in SECTIONS
            if any(FIELD_SECTION[k] == name for k in fields)
        }
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        check(
            isinstance(d, dict),
            f"a config must be a JSON object with sections {sorted(SECTIONS)}, got {type(d).__name__}.",
        )
        parts = {}
        for name, sub in SECTIONS.items():
            given = d.get(name, {})
            check(
                isinstance(given, dict),
                f"config section `{name}` must be an object of fields, got {type(given).__name__}.",
            )
            known = {f.name for f in dataclasses.fields(sub)}
            unknown = set(given) - known
            check(not unknown, f"config section `{name}` has unknown fields {sorted(unknown)}; known: {sorted(known)}.")
            try:
                parts[name] = sub(**given)
            except TypeError as e:
                # A field of the wrong JSON type ("batch_size": "8") fails a comparison in the checks.
                raise ConfigError(
                    f"config section `{name}` has a value of the wrong type ({e}); expected the types `--help` shows."
                ) from None
        return cls(preset=d.get("preset"), **parts)

    @classmethod
    def from_json(cls, path: str | Path) -> ExperimentConfig:
        """A saved config; a value no longer accepted (a run trained with `memory_mode` oracle or
        shuffle, say), or a file that is not JSON, is an error naming the file, not a policy rebuilt
        with another setting or a bare parser message."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"config file {path} does not exist; expected a config.json written by training."
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} cannot be read as a config ({e}).") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path} is not valid JSON ({e}); expected the config.json written by training."
            ) from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


SECTIONS = {"data": DataConfig, "world": WorldConfig, "policy": PolicyConfig, "train": TrainConfig}
# Field name -> its section (field names are unique across sections: each is one flag).
FIELD_SECTION = {f.name: name for name, sub in SECTIONS.items() for f in dataclasses.fields(sub)}


def flatten(cfg: ExperimentConfig) -> dict[str, Any]:
    """Field name -> value over every section (field names are unique across sections)."""
    return {k: v for sec in SECTIONS for k, v in dataclasses.asdict(getattr(cfg, sec)).items()}
