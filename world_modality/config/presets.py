"""The named experiments (E0..E2-Flow, E2-State, E2-Pretrained, E2-Present) and building a config from one."""

from __future__ import annotations

from typing import Any

from .checks import ConfigError
from .sections import FIELD_SECTION, SECTIONS, ExperimentConfig, flatten

# Each preset changes only the fields that define it; everything else keeps its default.
PRESETS: dict[str, dict[str, Any]] = {
    "E0": {"disable_future_injection": True, "lambda_world": 0.0},
    "E2": {"lambda_world": 0.2, "delta_prediction": True, "latent_suffix": "m4"},
    "E4": {"lambda_world": 0.2, "delta_prediction": True, "latent_suffix": "m4", "lambda_text": 0.1},
    "E0-Flow": {"disable_future_injection": True, "lambda_world": 0.0, "action_head": "flow"},
    "E2-Flow": {"lambda_world": 0.2, "delta_prediction": True, "latent_suffix": "m4", "action_head": "flow"},
    # The upper bound: the simulator's object state (observation.environment_state) as the world latent.
    "E2-State": {"lambda_world": 0.2, "delta_prediction": True, "latent_suffix": "m4", "world_encoder": "env_state"},
    # E2 with a V-JEPA encoder that has learnt something (`world-modality pretrain-world`); needs world_encoder_path.
    "E2-Pretrained": {"lambda_world": 0.2, "delta_prediction": True, "latent_suffix": "m4", "world_encoder": "vjepa2"},
    # History without foresight: E2's m-frame world latent z_t in the memory instead of a prediction, no world loss.
    # The Prophet is still built (it holds the latent statistics that normalise the memory and define the zero and
    # random ablations, and keeps E2's checkpoint layout) but gets no gradient, so it stays at its copy-last init.
    "E2-Present": {"lambda_world": 0.0, "delta_prediction": True, "latent_suffix": "m4", "memory_mode": "present"},
}


def build_config(overrides: dict[str, Any], preset: str | None = None) -> ExperimentConfig:
    """Defaults, then the preset, then explicit overrides (flat field names)."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}.")
    flat: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    flat.update(overrides)
    if preset == "E2-Pretrained" and not flat.get("world_encoder_path"):
        raise ConfigError(
            "preset E2-Pretrained needs --world_encoder_path DIR: a folder `world-modality "
            "pretrain-world --out DIR` wrote (or any local V-JEPA 2 checkpoint)."
        )
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in flat.items():
        if key not in FIELD_SECTION:
            raise ConfigError(f"unknown config field {key!r}.")
        sections[FIELD_SECTION[key]][key] = value
    return ExperimentConfig(preset=preset, **{k: SECTIONS[k](**v) for k, v in sections.items()})


def matching_preset(cfg: ExperimentConfig) -> str | None:
    """The preset whose defining fields this config has (most specific first), else None."""
    flat, base = flatten(cfg), flatten(build_config({}))
    for name in ("E2-State", "E2-Pretrained", "E2-Present", "E4", "E2-Flow", "E0-Flow", "E2", "E0"):
        # memory_mode too: an E2 trained on `present` memory is not E2.
        wanted = {k: base[k] for k in ("action_head", "lambda_text", "disable_future_injection", "memory_mode")}
        wanted.update(PRESETS[name])
        if all(flat[k] == v for k, v in wanted.items()):
            return name
    return None
