"""Typed experiment configuration: frozen dataclasses (sections.py), the named presets (presets.py), one
command-line flag per field (flags.py), and the named choices with their checks (checks.py).

The research notes' flags (`--lambda_world 0.2 --delta_prediction --latent_suffix m4 ...`) are the
interface; every field has exactly one flag of the same name. A config never changes once made:
`cfg.replace(dataset=...)` derives a new one.
"""

from .checks import (
    ACTION_HEADS,
    BACKBONE_DTYPES,
    BACKBONES,
    CLOSED_LOOP_MEMORY_MODES,
    DEFAULT_LORA_TARGETS,
    FLOW_TIME_SAMPLING,
    MEMORY_MODES,
    TRAIN_MEMORY_MODES,
    WORLD_ENCODER_DTYPES,
    WORLD_ENCODERS,
    ConfigError,
    check_memory_mode,
)
from .flags import FIELD_HELP, add_config_flags, config_from_args, parse_train_args
from .presets import PRESETS, build_config, matching_preset
from .sections import (
    FIELD_SECTION,
    SECTIONS,
    DataConfig,
    ExperimentConfig,
    PolicyConfig,
    TrainConfig,
    WorldConfig,
    flatten,
)

__all__ = [
    "ACTION_HEADS",
    "BACKBONE_DTYPES",
    "BACKBONES",
    "CLOSED_LOOP_MEMORY_MODES",
    "DEFAULT_LORA_TARGETS",
    "FLOW_TIME_SAMPLING",
    "MEMORY_MODES",
    "TRAIN_MEMORY_MODES",
    "WORLD_ENCODER_DTYPES",
    "WORLD_ENCODERS",
    "ConfigError",
    "check_memory_mode",
    "FIELD_HELP",
    "add_config_flags",
    "config_from_args",
    "parse_train_args",
    "PRESETS",
    "build_config",
    "matching_preset",
    "FIELD_SECTION",
    "SECTIONS",
    "DataConfig",
    "ExperimentConfig",
    "PolicyConfig",
    "TrainConfig",
    "WorldConfig",
    "flatten",
]
