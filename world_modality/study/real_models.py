"""The models a study trains with beyond the embedded tiny ones: a real backbone (Qwen2.5-VL, SmolVLM) and the real
frozen V-JEPA 2 world encoder, each from a local folder or a hub-cache id already on disk. Their weights are looked
for before anything runs (nothing is downloaded), and the run settings that give every arm the study's models."""

from __future__ import annotations

import json
from pathlib import Path

TINY_BACKBONE = "tiny-qwen2.5-vl"
REAL_ENCODER = "vjepa2"  # --world-encoder vjepa2: the frozen V-JEPA 2 at --world-encoder-path
# config.json model_type of each real family, as policy/backbone.py, policy/smolvlm.py and transformers' VJEPA2Model
# accept them; named here so that checking a study's flags imports no torch (test_real_models.py holds them equal).
MODEL_TYPES = {"qwen2.5-vl": ("qwen2_5_vl",), "smolvlm": ("idefics3", "smolvlm"), REAL_ENCODER: ("vjepa2",)}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def uses_real_encoder(s) -> bool:
    """Whether some arm's image world encoder is the real V-JEPA 2 (--world-encoder vjepa2 governs it)."""
    from .world_encoder import governed

    return s.world_encoder == REAL_ENCODER and bool(governed(s))


def model_overrides(s, experiment: str) -> dict:
    """The run settings that give an arm the study's backbone and, for the arms --world-encoder governs, the real
    encoder; {} for the embedded defaults, so a study of tiny models builds the configs it always built. A real
    backbone trains frozen with LoRA adapters (its own weights stay in its folder)."""
    from .world_encoder import encoder_of

    out: dict = {}
    if s.backbone != TINY_BACKBONE:
        out.update(backbone=s.backbone, backbone_path=s.backbone_path)
        if not s.backbone.startswith("tiny-"):
            out.update(freeze_backbone=True, use_lora=True)
    if s.backbone_dtype != "float32":
        out["backbone_dtype"] = s.backbone_dtype
    if encoder_of(s, experiment) == REAL_ENCODER:
        out.update(world_encoder=REAL_ENCODER, world_encoder_path=s.world_encoder_path)
        out["world_encoder_dtype"] = s.world_encoder_dtype
    return out


def check_models(s, given) -> None:
    """Refuse, before anything runs: a path no model uses, and a real model whose weights are not on disk.
    `given`: the parsed flags, so that a message says which path came from the budget."""
    from ..config import ConfigError

    if s.backbone.startswith("tiny-") and s.backbone_path is not None:
        raise ConfigError(
            f"--backbone-path {s.backbone_path} given with --backbone {s.backbone}, which has no weights to load "
            "(a tiny backbone is built at random); expected a real backbone (qwen2.5-vl, smolvlm) or no path."
        )
    if not s.backbone.startswith("tiny-"):
        config = _check_weights(
            s.backbone, s.backbone_path, "--backbone-path", _why(given, "backbone_path", "backbone")
        )
        vision = config.get("vision_config") or {}
        unit = int(vision.get("patch_size", 1)) * int(vision.get("spatial_merge_size", 1))
        if s.backbone == "qwen2.5-vl" and s.image_size % unit:  # the backbone's own check, before any stage runs
            raise ConfigError(
                f"--image-size {s.image_size} must be a multiple of {unit} for the qwen2.5-vl at {s.backbone_path} "
                f"(its patch {vision.get('patch_size')} x merge {vision.get('spatial_merge_size')}), e.g. "
                f"{unit * max(1, s.image_size // unit)}."
            )
    if uses_real_encoder(s):
        why = _why(given, "world_encoder_path", "V-JEPA 2 world encoder")
        _check_weights(REAL_ENCODER, s.world_encoder_path, "--world-encoder-path", why)


def _why(given, name: str, what: str) -> str:
    typed = getattr(given, name, None) is not None
    return "" if typed else f" (the {what} of --budget {getattr(given, 'budget', 'cpu')})"


def _check_weights(family: str, path: str | None, flag: str, budget: str) -> dict:
    """A real model's folder (or hub-cache snapshot) holds its config.json, of the family named, and its weights;
    returns that config."""
    from ..config import ConfigError

    if not path:
        raise ConfigError(f"{family} needs {flag} (a local folder or a hub-cache id already on disk); none given.")
    folder, where = _located(path)
    advice = (
        f"put the model there (e.g. `hf download {path}` on a machine with network fills that hub cache), "
        if where.startswith("hub cache")
        else f"put the model's config.json and weights in {path}, "
    ) + f"or point {flag} at a local folder that holds them; nothing is downloaded at run time."
    config = folder / "config.json" if folder else None
    if config is None or not config.is_file():
        raise ConfigError(f"{flag} {path}{budget}: no config.json of a {family} model in {where}; {advice}")
    try:
        read = json.loads(config.read_text())
        model_type = read.get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"{flag} {path}: {config} is not a readable model config ({e}); {advice}") from None
    if model_type not in MODEL_TYPES[family]:
        raise ConfigError(
            f"{flag} {path} holds a {model_type!r} model; {family} expects model_type "
            f"{' or '.join(MODEL_TYPES[family])}."
        )
    if not any((folder / f).is_file() for f in WEIGHT_FILES) and not any(folder.glob("*.safetensors")):
        raise ConfigError(
            f"{flag} {path}{budget}: {where} holds the config of a {family} model but no weights (none of "
            f"{', '.join(WEIGHT_FILES)}); {advice}"
        )
    return read


def _located(path: str) -> tuple[Path | None, str]:
    """(folder, how the message names it) of a local folder, or of a hub-cache id's snapshot (None when the cache
    holds none of it). Only the disk is read: huggingface_hub's cache lookup never reaches the network."""
    if Path(path).exists() or "/" not in path or path.startswith((".", "/", "~")) or path.count("/") != 1:
        return Path(path).expanduser(), f"the folder {path}"
    from huggingface_hub import constants, try_to_load_from_cache

    cache = Path(constants.HF_HUB_CACHE)
    found = try_to_load_from_cache(path, "config.json")
    where = f"hub cache {cache} (models--{path.replace('/', '--')}; nor is {path} a folder here)"
    return (Path(found).parent if isinstance(found, str) else None), where
