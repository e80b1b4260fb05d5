"""The one check that a checkpoint's three descriptions agree before any model is built: config.json, policy.json
(shapes, world encoder, data info) and the tensor names and shapes in model.safetensors' header. An edited
config.json once made every closed-loop episode an exception."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NoReturn

from ..config import ExperimentConfig
from .checkpoint_store import FORMAT, CheckpointError, read_json
from .model import PolicyShapes
from .smolvlm import TinySmolVLMSize


def read_meta(root: Path) -> dict:
    """policy.json of a checkpoint folder, checked: format, integer shapes, world encoder, data info."""
    if not (root / "policy.json").exists() or not (root / "config.json").exists():
        raise CheckpointError(f"{root} is not a checkpoint folder: expected policy.json and config.json in it.")
    path = root / "policy.json"
    meta = read_json(path, "the policy description a checkpoint writes (format, shapes, world encoder)")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds a JSON {type(meta).__name__}; expected an object with format and shapes.")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{root}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}.")
    shapes = meta.get("shapes")
    fields = [f.name for f in dataclasses.fields(PolicyShapes)]
    if not (
        isinstance(shapes, dict)
        and set(shapes) == set(fields)
        and all(isinstance(shapes[k], int) and shapes[k] >= 0 for k in fields)
    ):
        raise CheckpointError(f"{path}: shapes is {shapes!r}; expected integers {fields}.")
    enc = meta.get("world_encoder")
    if enc is not None and not (isinstance(enc, dict) and {"name", "num_frames", "image_size"} <= set(enc)):
        raise CheckpointError(
            f"{path}: world_encoder is {enc!r}; expected null or an object with name, num_frames, "
            f"image_size (the encoder's config)."
        )
    info = meta.get("data_info", {})
    if not isinstance(info, dict) or any(
        not isinstance(info.get(k, 1), int) or info.get(k, 1) < 1 for k in ("fps", "control_steps_per_frame")
    ):
        raise CheckpointError(
            f"{path}: data_info is {info!r}; expected an object with integer fps and control_steps_per_frame >= 1."
        )
    return meta


class _Mismatch(Exception):
    """One disagreement between config.json, policy.json and the tensors: (field, value, evidence)."""


def _disagree(field: str, value: Any, evidence: str) -> NoReturn:
    raise _Mismatch(field, value, evidence)


def check_consistency(root: Path, cfg: ExperimentConfig, meta: dict, header: dict[str, list[int]]) -> None:
    """config.json, policy.json and the tensor shapes of model.safetensors describe one policy; else a
    CheckpointError naming the config field that disagrees and what the weights say instead. Needs no
    model: it reads shapes from the header, so evaluation's parent process runs it before any episode."""
    try:
        _check_consistency(cfg, meta, header)
    except _Mismatch as m:
        field, value, evidence = m.args
        where = "policy.json" if field.startswith("policy.json") else "config.json"
        name = field if field.startswith("policy.json") else f"`{field}`"
        raise CheckpointError(
            f"checkpoint {root} does not hold together: {where} {name.removeprefix('policy.json ')} is {value!r}, "
            f"but {evidence}. Restore the {where} written with these weights (it was edited or copied from "
            f"another checkpoint)."
        ) from None


def _check_consistency(cfg: ExperimentConfig, meta: dict, header: dict[str, list[int]]) -> None:
    p, w = cfg.policy, cfg.world
    shapes = meta["shapes"]
    state_dim, action_dim, latent_dim = shapes["state_dim"], shapes["action_dim"], shapes["latent_dim"]

    def shape(key: str) -> list[int] | None:
        return header.get(key)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in header)

    # Which parts the weights hold, against what the config builds.
    use_memory = not p.disable_future_injection
    needs_world = use_memory or w.lambda_world > 0
    if has("xattn.") != use_memory:
        _disagree(
            "disable_future_injection",
            p.disable_future_injection,
            "model.safetensors " + ("holds" if has("xattn.") else "has no") + " future-injection tensors (xattn.*)",
        )
    if has("prophet.") != needs_world:
        _disagree(
            "lambda_world",
            w.lambda_world,
            "model.safetensors " + ("holds" if has("prophet.") else "has no") + " Prophet tensors (prophet.*) "
            f"with disable_future_injection {p.disable_future_injection}",
        )
    if (meta.get("world_encoder") is not None) != needs_world:
        _disagree(
            "disable_future_injection",
            p.disable_future_injection,
            "policy.json " + ("records" if meta.get("world_encoder") else "records no") + " world encoder",
        )
    is_flow = has("head.cond.")
    if is_flow != (p.action_head == "flow"):
        _disagree("action_head", p.action_head, f"model.safetensors holds a {'flow' if is_flow else 'mse'} head")

    # Sizes the config and policy.json set, against the shapes of the tensors that carry them.
    # (A tensor left out altogether is named by load_checkpoint's missing-tensor check.)
    act = shape("act_queries")
    if act is not None and act[:1] != [p.n_act_tokens]:
        _disagree("n_act_tokens", p.n_act_tokens, f"act_queries in model.safetensors has shape {act}")
    for key, dim, name in (("state_mean", state_dim, "state_dim"), ("action_mean", action_dim, "action_dim")):
        if shape(key) is not None and shape(key) != [dim]:
            _disagree(f"policy.json shapes.{name}", dim, f"{key} in model.safetensors has shape {shape(key)}")
    out = shape("head.net.4.weight" if is_flow else "head.net.3.weight")
    if out is not None and out[0] != p.chunk_size * action_dim:
        chunk = f"{out[0] // action_dim} actions" if action_dim and out[0] % action_dim == 0 else f"{out[0]} values"
        _disagree(
            "chunk_size",
            p.chunk_size,
            f"the action head in model.safetensors predicts chunks of {chunk} of {action_dim}-D actions",
        )
    enc = meta.get("world_encoder")
    if enc is not None and enc.get("world_tokens", 1) != w.world_tokens:  # absent: from before world_tokens, N = 1
        _disagree(
            "world_tokens",
            w.world_tokens,
            f"policy.json records a world encoder of "
            f"{enc.get('world_tokens', 1)} spatial token(s) per latent ({enc.get('encoder_id')})",
        )
    if use_memory:
        # N world tokens of latent_dim / N values each, n_memory_tokens memory tokens per world token (policy/model.py).
        pos, proj = shape("memory_pos"), shape("memory_proj.weight")
        if pos is not None and pos[0] != p.n_memory_tokens * w.world_tokens:
            _disagree(
                "n_memory_tokens",
                p.n_memory_tokens,
                f"memory_pos in model.safetensors has shape {pos} "
                f"({w.world_tokens} world token(s) x n_memory_tokens rows)",
            )
        if proj is not None and proj[1] * w.world_tokens != latent_dim:
            _disagree(
                "policy.json shapes.latent_dim",
                latent_dim,
                f"memory_proj.weight has shape {proj} ({w.world_tokens} world token(s) of {proj[1]} values)",
            )
    if needs_world:
        mean, first = shape("prophet.latent_mean"), shape("prophet.mlp.0.weight")
        if mean is not None and mean != [latent_dim]:
            _disagree("policy.json shapes.latent_dim", latent_dim, f"prophet.latent_mean has shape {mean}")
        if first is not None and first[0] != w.prophet_hidden:
            _disagree("prophet_hidden", w.prophet_hidden, f"prophet.mlp.0.weight has shape {first}")

    # The backbone: LoRA adapters, stored base weights, the family and (tiny SmolVLM) the image size.
    lora = sorted(k for k in header if ".lora_A." in k)
    if bool(lora) != p.use_lora:
        _disagree("use_lora", p.use_lora, "model.safetensors " + ("holds" if lora else "has no") + " LoRA tensors")
    if lora and header[lora[0]][0] != p.lora_rank:
        _disagree("lora_rank", p.lora_rank, f"{lora[0]} has shape {header[lora[0]]}")
    base = [k for k in header if k.startswith("backbone.") and ".lora_" not in k]
    stores_base = p.backbone.startswith("tiny-") or not p.freeze_backbone
    if bool(base) != stores_base:
        _disagree(
            "freeze_backbone",
            p.freeze_backbone,
            f"model.safetensors {'holds' if base else 'has no'} base weights of the {p.backbone} backbone",
        )
    marker = {"qwen2.5-vl": ".language_model.", "smolvlm": ".text_model."}[p.backbone_family]
    if base and not any(marker in k for k in base):
        _disagree(
            "backbone",
            p.backbone,
            f"the backbone tensors in model.safetensors have no {marker.strip('.')} (e.g. {sorted(base)[0]})",
        )
    vision_pos = shape("backbone.model.model.vision_model.embeddings.position_embedding.weight")
    if p.backbone == "tiny-smolvlm" and vision_pos is not None:
        patches = (cfg.data.image_size // TinySmolVLMSize().patch_size) ** 2
        if vision_pos[0] != patches:
            _disagree(
                "image_size",
                cfg.data.image_size,
                f"the vision position embedding has {vision_pos[0]} patches ({patches} expected)",
            )

    # The world encoder policy.json records (it is rebuilt from there) against the config's windows.
    enc = meta.get("world_encoder")
    if enc is not None:
        if enc["name"] != w.world_encoder:
            _disagree("world_encoder", w.world_encoder, f"policy.json records world encoder {enc['name']!r}")
        if enc["num_frames"] != w.num_frames:
            _disagree(
                "latent_suffix",
                w.latent_suffix,
                f"policy.json records a world encoder of "
                f"m={enc['num_frames']} frames per latent ({enc.get('encoder_id')})",
            )
        if enc.get("pretrained_path") != w.world_encoder_path:
            _disagree(
                "world_encoder_path",
                w.world_encoder_path,
                f"policy.json records a world encoder loaded from {enc.get('pretrained_path')!r}",
            )
        if enc["name"] == "tiny-vjepa2" and enc["image_size"] != w.world_image_size:
            _disagree(
                "world_image_size",
                w.world_image_size,
                f"policy.json records a world encoder of {enc['image_size']}-px inputs",
            )
        enc_id = enc.get("encoder_id")
        if enc_id and not str(enc_id).startswith(f"{enc['name']}-m{enc['num_frames']}-s{enc['image_size']}-"):
            _disagree(
                "policy.json world_encoder.encoder_id",
                enc_id,
                f"its name, m and size say {enc['name']}-m{enc['num_frames']}-s{enc['image_size']}",
            )
        embed = shape("world_encoder.model.encoder.embeddings.patch_embeddings.proj.weight")
        # env_state has no weights at all: its statistics are in policy.json (world/env_state.py).
        stores_weights = enc.get("pretrained_path") is None and enc["name"] != "env_state"
        if (embed is not None) != stores_weights:
            _disagree(
                "world_encoder_path",
                w.world_encoder_path,
                "model.safetensors " + ("holds" if embed is not None else "has no") + " world encoder weights",
            )
        if embed is not None and len(embed) == 5 and enc["num_frames"] % embed[2]:
            _disagree("latent_suffix", w.latent_suffix, f"the world encoder embeds frames {embed[2]} at a time")
    frame_size = meta.get("data_info", {}).get("frame_size")
    if isinstance(frame_size, dict):
        cams = tuple(cfg.data.image_keys) + ((w.world_image_key,) if needs_world else ())
        missing = [k for k in cams if k not in frame_size]
        if missing:
            _disagree(
                "image_keys",
                list(cfg.data.image_keys),
                f"policy.json records the frame sizes of cameras {sorted(frame_size)} only (not {missing})",
            )


def check_tokenizer_file(root: Path, cfg: ExperimentConfig) -> None:
    # The tiny backbones' tokenizer is built from the training data: only the checkpoint has it.
    if cfg.policy.backbone.startswith("tiny-") and not (root / "tokenizer.json").is_file():
        raise CheckpointError(
            f"checkpoint {root} has no tokenizer.json; expected the tokenizer the "
            f"{cfg.policy.backbone} backbone was trained with (written beside model.safetensors)."
        )
