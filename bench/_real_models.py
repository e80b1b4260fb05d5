"""The real-size policy that bench/real_size.py times: Qwen2.5-VL-3B and V-JEPA 2 ViT-L built from their real
configurations with random weights (nothing is downloaded), or the tiny configs on CPU, and synthetic inputs."""

from __future__ import annotations

import numpy as np
import torch

INSTRUCTION = "put the black bowl on the plate"

# Qwen/Qwen2.5-VL-3B-Instruct config.json (token ids are taken from the tokenizer in use).
QWEN25_VL_3B_TEXT = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    tie_word_embeddings=True,
)
QWEN25_VL_3B_VISION = dict(
    depth=32,
    hidden_act="silu",
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_chans=3,
    out_hidden_size=2048,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
# facebook/vjepa2-vitl-fpc64-256 (the encoder part is what the policy runs; the predictor is skipped).
VJEPA2_VITL_256 = dict(
    crop_size=256,
    patch_size=16,
    frames_per_clip=64,
    tubelet_size=2,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    mlp_ratio=4.0,
    pred_hidden_size=384,
    pred_num_hidden_layers=12,
    pred_num_attention_heads=12,
    pred_num_mask_tokens=10,
)


def _local_config(path: str, what: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError as e:
        raise SystemExit(f"--{what}: no readable config.json in {path!r} (local files only): {e}") from e


def qwen_config(args, token_ids: dict[str, int]):
    from transformers import Qwen2_5_VLConfig

    if args.qwen_config:
        cfg = _local_config(args.qwen_config, "qwen-config")
        if cfg.model_type != "qwen2_5_vl":
            raise SystemExit(
                f"--qwen-config {args.qwen_config!r} holds a {cfg.model_type!r} config, expected qwen2_5_vl"
            )
    else:
        cfg = Qwen2_5_VLConfig(text_config=dict(QWEN25_VL_3B_TEXT), vision_config=dict(QWEN25_VL_3B_VISION))
    # The prompt's special tokens must be the ids the model treats as image/vision tokens.
    cfg.image_token_id, cfg.video_token_id = token_ids["<|image_pad|>"], token_ids["<|video_pad|>"]
    cfg.vision_start_token_id, cfg.vision_end_token_id = token_ids["<|vision_start|>"], token_ids["<|vision_end|>"]
    return cfg


def vjepa2_config(args):
    from transformers import VJEPA2Config

    if args.vjepa2_config:
        cfg = _local_config(args.vjepa2_config, "vjepa2-config")
        if cfg.model_type != "vjepa2":
            raise SystemExit(
                f"--vjepa2-config {args.vjepa2_config!r} holds a {cfg.model_type!r} config, expected vjepa2"
            )
        return cfg
    return VJEPA2Config(**VJEPA2_VITL_256)


def tokenizer_for(args):
    """The real tokenizer when --qwen-config has one, else the project's byte-level BPE with Qwen's
    special tokens (prompt text then tokenises differently; the image tokens, the bulk, do not)."""
    from world_modality.policy.tokenizer import SPECIAL_TOKENS, build_tokenizer

    if args.qwen_config and not args.tiny:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(args.qwen_config, local_files_only=True)
            return tok, {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}, "qwen"
        except (OSError, ValueError):
            pass
    tok = build_tokenizer([INSTRUCTION])
    return tok, {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}, "project-bpe"


def build(args, device: torch.device, experiment: str = "E2"):
    """(policy, preprocessor, info): the assembled policy of the preset `experiment` as evaluation runs it, on
    `device`, its trainable parameters chosen as training chooses them; E0 builds no world encoder."""
    from transformers import Qwen2_5_VLForConditionalGeneration, VJEPA2Model

    from world_modality.config import build_config
    from world_modality.policy.backbone import QwenBackbone, build_tiny_qwen
    from world_modality.policy.factory import build_preprocessor
    from world_modality.policy.lora import apply_lora, set_trainable
    from world_modality.policy.model import PolicyShapes, WorldModalityPolicy
    from world_modality.world.encoder import WorldEncoder, build_world_encoder
    from world_modality.world.vjepa2_processing import VJEPA2Processing

    tokenizer, token_ids, tok_kind = tokenizer_for(args)
    overrides = {"image_size": args.image_size, "latent_suffix": f"m{args.frames}", "action_head": args.action_head}
    if args.study_slice and args.finetune == "lora":  # what a study's real backbone trains (study/real_models.py)
        overrides.update(freeze_backbone=True, use_lora=True)
    encoder = None
    if args.tiny:
        cfg = build_config({**overrides, "world_image_size": 64}, preset=experiment)
        backbone = build_tiny_qwen(tokenizer)
        if needs_world(cfg):
            encoder = build_world_encoder(num_frames=args.frames, image_size=64, device=device)
    else:
        dtype = torch.bfloat16
        cfg = build_config(
            {
                **overrides,
                "backbone": "qwen2.5-vl",
                "backbone_path": "random-init",
                "backbone_dtype": "bfloat16",
                "world_encoder": "vjepa2",
                "world_encoder_path": "random-init",
            },
            preset=experiment,
        )
        # Random init straight on the GPU: a 3B model initialised on the CPU takes minutes.
        with torch.device(device):
            qwen = Qwen2_5_VLForConditionalGeneration._from_config(qwen_config(args, token_ids), dtype=dtype)
            vjepa = VJEPA2Model._from_config(vjepa2_config(args), dtype=dtype) if needs_world(cfg) else None
        backbone = QwenBackbone(qwen.eval(), tokenizer, pretrained=True)
        if vjepa is not None:
            crop = int(vjepa.config.crop_size)
            encoder = WorldEncoder(
                vjepa,
                name="vjepa2",
                num_frames=args.frames,
                image_size=crop,
                seed=None,
                pretrained_path="random-init",
                processing=VJEPA2Processing.for_crop(crop),
            )
    pcfg = cfg.policy
    if pcfg.use_lora:  # as policy/factory.py's build_backbone adds them
        apply_lora(backbone.model, pcfg.resolved_lora_target(), pcfg.lora_rank, pcfg.lora_alpha)
    shapes = PolicyShapes(state_dim=8, action_dim=7, latent_dim=encoder.latent_dim if encoder is not None else 0)
    policy = WorldModalityPolicy(cfg, backbone, shapes, encoder).to(device).eval()
    set_trainable(policy, pcfg.freeze_backbone, text_loss=pcfg.lambda_text > 0)
    preprocess = build_preprocessor(cfg, policy)

    def millions(m) -> float:
        return round(sum(p.numel() for p in m.parameters()) / 1e6, 3) if m is not None else 0.0

    head_params = sum(millions(getattr(policy, n, None)) for n in ("memory_proj", "xattn", "head", "state_proj"))
    info = {
        "tokenizer": tok_kind,
        "backbone_dtype": str(backbone.dtype).removeprefix("torch."),
        "world_dtype": str(encoder.dtype).removeprefix("torch.") if encoder is not None else None,
        "world_image_size": encoder.image_size if encoder is not None else None,
        "latent_dim": shapes.latent_dim,
        "params_m": {
            "world_encoder": millions(encoder),
            "backbone": millions(backbone),
            "prophet": millions(getattr(policy, "prophet", None)),
            "head": round(head_params, 3),
        },
        "trainable_params_m": round(sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6, 3),
    }
    return policy, preprocess, info


def needs_world(cfg) -> bool:
    """The arm builds a world encoder and Prophet (the policy's own rule: memory injection or a world loss)."""
    return not cfg.policy.disable_future_injection or cfg.world.lambda_world > 0


def inputs(args, world_size: int, seed: int = 0, batch: int | None = None, size: int = 256):
    """`batch` (default --batch) observations in the dataset schema, cameras size x size (LIBERO renders 256x256),
    and the world encoder's m frames per observation."""
    rng = np.random.default_rng(seed)
    batch = args.batch if batch is None else batch
    obs = [
        {
            "observation.images.image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.images.wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=8).astype(np.float32),
            "task": INSTRUCTION,
        }
        for _ in range(batch)
    ]
    frames = rng.integers(0, 256, (batch, args.frames, size, size, 3), dtype=np.uint8)
    return obs, frames
