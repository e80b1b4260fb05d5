"""The named choices a config field or flag takes, the error a bad value raises, and the one memory-mode check."""

from __future__ import annotations

import dataclasses
import math

# Memory ablations of offline evaluation (`eval-offline --memory`); closed loop takes all but `oracle`.
# `present` is the current latent z_t in place of the prediction: the world encoder's m frames of
# history without foresight. Training knows `predicted` and `present` (neither reads the future); any
# other mode would feed the action path the true future, or a control, while it learns.
MEMORY_MODES = ("predicted", "present", "oracle", "zero", "random", "shuffle")
TRAIN_MEMORY_MODES = ("predicted", "present")
# Every mode but `oracle`: the true future depends on actions not yet taken. `present` is an ablation of an
# E2 checkpoint and the trained mode of an E2-Present one.
CLOSED_LOOP_MEMORY_MODES = tuple(m for m in MEMORY_MODES if m != "oracle")
ACTION_HEADS = ("mse", "flow")
FLOW_TIME_SAMPLING = ("uniform", "beta")
# VLM backbones: a `tiny-` variant (random init, embedded default and tests) and the real family.
BACKBONES = ("tiny-qwen2.5-vl", "qwen2.5-vl", "tiny-smolvlm", "smolvlm")
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")
# World encoders: a tiny random V-JEPA 2 (embedded default), V-JEPA 2 weights, or the privileged object state.
WORLD_ENCODERS = ("tiny-vjepa2", "vjepa2", "env_state")
WORLD_ENCODER_DTYPES = ("auto", "float32", "bfloat16", "float16")
# LoRA on each family's language-model attention projections (module names differ per family).
DEFAULT_LORA_TARGETS = {
    "qwen2.5-vl": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)$",
    "smolvlm": r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj)$",
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and the rule."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_finite(section) -> None:
    """Every float field finite: argparse and JSON both accept nan and inf, and a NaN slips through
    every `x >= 0` / `x > 0` check (`--lambda_world inf` trained on an infinite loss)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"`{f.name}` must be a finite number, got {value}.")


def check_memory_mode(mode: str, use: str) -> str:
    """The one check of a memory mode for where it is used: `training` (TRAIN_MEMORY_MODES), `closed-loop`
    (CLOSED_LOOP_MEMORY_MODES) or `offline` (every MEMORY_MODES ablation); returns the mode."""
    allowed = {"training": TRAIN_MEMORY_MODES, "closed-loop": CLOSED_LOOP_MEMORY_MODES, "offline": MEMORY_MODES}[use]
    if mode in allowed:
        return mode
    if use == "training":
        raise ConfigError(
            f"`memory_mode` must be 'predicted' or 'present' in training (the Prophet's prediction, or the current "
            f"latent z_t: history without foresight), got {mode!r}; "
            f"{', '.join(m for m in MEMORY_MODES if m not in TRAIN_MEMORY_MODES)} are evaluation ablations "
            f"(eval-offline --memory, eval --memory)."
        )
    why = " (oracle is offline-only: the true future depends on actions not yet taken)" if mode == "oracle" else ""
    raise ConfigError(f"{use} memory mode must be one of {allowed}, got {mode!r}{why}.")
