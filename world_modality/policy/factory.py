"""Builds a policy (backbone, LoRA, world encoder, heads) from a config; used by training and loading."""

from __future__ import annotations

from typing import Any

from ..config import ExperimentConfig
from ..world.encoder import WorldEncoder, build_world_encoder
from .backbone import QWEN_CLASSES, TinyQwenSize, VLMBackbone, build_tiny_qwen, load_qwen, local_config
from .lora import apply_lora, set_trainable
from .model import PolicyShapes, WorldModalityPolicy
from .preprocess import ObservationPreprocessor
from .smolvlm import MODEL_CLASSES as SMOLVLM_CLASSES
from .smolvlm import TinySmolVLMSize, build_tiny_smolvlm, load_smolvlm

# The world encoder stands in for a frozen pretrained model: one fixed init for every run and seed,
# so E0/E2 and all seeds share one latent cache.
WORLD_ENCODER_SEED = 0


def world_encoder_from_config(cfg: ExperimentConfig) -> WorldEncoder:
    w = cfg.world
    return build_world_encoder(
        name=w.world_encoder,
        num_frames=w.num_frames,
        image_size=w.world_image_size if w.world_encoder == "tiny-vjepa2" else None,
        seed=WORLD_ENCODER_SEED,
        pretrained_path=w.world_encoder_path,
        dtype=w.world_encoder_dtype,
        world_tokens=w.world_tokens,
    )


def tiny_qwen_size(cfg: ExperimentConfig) -> TinyQwenSize:
    """The tiny Qwen's size from `tiny_width`/`tiny_depth`; the defaults give the embedded model exactly."""
    p = cfg.policy
    # The MLP stays 2x the width, as in the default (128 -> 256); the vision tower and patching stay as they are.
    return TinyQwenSize(hidden_size=p.tiny_width, num_layers=p.tiny_depth, intermediate_size=2 * p.tiny_width)


def check_image_size(cfg: ExperimentConfig) -> None:
    """Refuse an `image_size` the backbone cannot take, reading at most the model's config.json:
    training calls this before it decodes frames, encodes latents or loads any weights. Qwen2.5-VL
    needs a multiple of patch_size × spatial_merge_size; SmolVLM resizes every image to its vision
    encoder's input, so any size goes (only the folder's model type is checked)."""
    p, size = cfg.policy, cfg.data.image_size
    if p.backbone == "tiny-qwen2.5-vl":
        tiny = tiny_qwen_size(cfg)
        unit, what = tiny.patch_size * tiny.merge_size, "patch_size*merge_size"
    elif p.backbone == "tiny-smolvlm":
        tiny = TinySmolVLMSize()
        unit, what = tiny.patch_size * tiny.scale_factor, "patch_size*scale_factor"
    elif p.backbone == "qwen2.5-vl":
        vc = local_config(p.backbone_path, QWEN_CLASSES).vision_config
        unit, what = int(vc.patch_size) * int(vc.spatial_merge_size), "patch_size*merge_size"
    else:
        local_config(p.backbone_path, SMOLVLM_CLASSES)
        return
    if size % unit:
        lower = max(unit, size - size % unit)
        raise ValueError(
            f"image_size {size} must be a multiple of {what} = {unit} for {p.backbone}"
            + (f" at {p.backbone_path}" if p.backbone_path else "")
            + f" (e.g. {lower} or {lower + unit})."
        )


def build_backbone(cfg: ExperimentConfig, tokenizer=None) -> VLMBackbone:
    p = cfg.policy
    if p.backbone.startswith("tiny-") and tokenizer is None:
        raise ValueError(
            f"the tiny backbone {p.backbone!r} needs the project's tokenizer (built from the dataset or "
            f"read from a checkpoint)."
        )
    if p.backbone == "tiny-qwen2.5-vl":
        backbone = build_tiny_qwen(tokenizer, seed=cfg.train.seed, size=tiny_qwen_size(cfg), dtype=p.backbone_dtype)
    elif p.backbone == "tiny-smolvlm":
        backbone = build_tiny_smolvlm(tokenizer, cfg.data.image_size, seed=cfg.train.seed, dtype=p.backbone_dtype)
    elif p.backbone == "qwen2.5-vl":
        backbone = load_qwen(p.backbone_path, dtype=p.backbone_dtype)
    elif p.backbone == "smolvlm":
        backbone = load_smolvlm(p.backbone_path, dtype=p.backbone_dtype)
    else:
        raise ValueError(f"unknown backbone {p.backbone!r}.")
    if p.use_lora:
        apply_lora(backbone.model, p.resolved_lora_target(), p.lora_rank, p.lora_alpha)
    return backbone


def build_policy(
    cfg: ExperimentConfig,
    shapes: PolicyShapes,
    tokenizer=None,
    world_encoder: WorldEncoder | None = None,
    encoder_config: dict[str, Any] | None = None,
) -> WorldModalityPolicy:
    backbone = build_backbone(cfg, tokenizer)
    needs_world = (not cfg.policy.disable_future_injection) or cfg.world.lambda_world > 0
    if needs_world and world_encoder is None:
        if encoder_config:
            world_encoder = build_world_encoder(**{k: v for k, v in encoder_config.items() if k != "encoder_id"})
        else:
            world_encoder = world_encoder_from_config(cfg)
    policy = WorldModalityPolicy(cfg, backbone, shapes, world_encoder if needs_world else None)
    set_trainable(policy, cfg.policy.freeze_backbone, text_loss=cfg.policy.lambda_text > 0)
    return policy


def build_preprocessor(cfg: ExperimentConfig, policy: WorldModalityPolicy) -> ObservationPreprocessor:
    return ObservationPreprocessor(
        policy.backbone, cfg.data.image_keys, cfg.data.image_size, cfg.policy.n_act_tokens, cfg.policy.max_text_tokens
    )
