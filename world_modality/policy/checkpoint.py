"""Checkpoints: safetensors + JSON, written atomically, loaded strictly.

A checkpoint folder holds config.json (the resolved experiment), policy.json (shapes, world
encoder identity, the fingerprint of a frozen pretrained backbone it does not store, step), model.safetensors
(every tensor the policy needs to act), tokenizer.json (embedded default) and, for resuming,
optimizer.safetensors + trainer_state.json.

Reading one checks, before any model is built, that the three agree: the shapes and tensor names
in the safetensors header, policy.json's recorded shapes and world encoder, and the config (an
edited config.json once made every closed-loop episode an exception). No checkpoint with NaN/inf
weights is ever written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ExperimentConfig
from ..optim_state import flatten_optimizer, unflatten_optimizer
from .model import PolicyShapes, WorldModalityPolicy
from .smolvlm import TinySmolVLMSize

FORMAT = "world-modality-checkpoint/1"
DONE_MARKER = "COMPLETE"


class CheckpointError(ValueError):
    """A checkpoint is incomplete, corrupt or does not match the policy it is loaded into."""


def checkpoint_keys(policy: WorldModalityPolicy) -> list[str]:
    """Exactly the tensors a checkpoint stores: all of them, except weights that reload from a
    pretrained path and never change (a frozen real backbone's base weights, a pretrained encoder)."""
    skip_backbone = _skips_backbone(policy)
    enc = getattr(policy, "world_encoder", None)
    skip_encoder = enc is not None and enc.pretrained_path is not None
    keys = []
    for k in policy.state_dict():
        if k.startswith("backbone.") and skip_backbone and ".lora_" not in k:
            continue
        if k.startswith("world_encoder.") and skip_encoder:
            continue
        keys.append(k)
    return keys


def _skips_backbone(policy: WorldModalityPolicy) -> bool:
    return bool(policy.backbone.pretrained and policy.cfg.policy.freeze_backbone)


def frozen_backbone_fingerprint(policy: WorldModalityPolicy, sample: int = 4096) -> str | None:
    """Identity of the pretrained backbone weights a checkpoint leaves out (they reload from
    `backbone_path`): names, shapes, dtypes and `sample` evenly strided values of every tensor.
    Enough to tell another model revision in the hub cache; the fixed sample keeps the cost independent
    of model size, where hashing every byte of a 7B model in bfloat16 would read 14 GB at each save and
    load. None when the checkpoint stores the backbone."""
    if not _skips_backbone(policy):
        return None
    h = hashlib.sha256()
    for key, tensor in sorted(policy.backbone.state_dict().items()):
        if ".lora_" in key:
            continue
        flat = tensor.detach().reshape(-1)
        values = flat[:: max(1, flat.numel() // sample)][:sample].to("cpu").contiguous()
        h.update(f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(values.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_tag() -> str:
    # The host is part of a writer's temporary folder name: a process id means nothing on another
    # machine sharing the run folder (a requeued job on another node, another container).
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def remove_partial_checkpoints(folder: str | Path) -> list[Path]:
    """Delete temporary folders left by writers on this machine that were killed mid-write (their
    process is gone); they are never loaded, only wasted space. A live writer's folder, and any
    folder written from another machine, is left alone."""
    host = _writer_tag().rsplit("-", 1)[0]
    removed = []
    for tmp in Path(folder).glob(f".tmp-*-{host}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied input/output embeddings of a fully trained
    backbone): the second name of a shared storage gets its own copy."""
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def _atomic_dir(final: Path):
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(final.parent)
    tmp = final.parent / f".tmp-{final.name}-{_writer_tag()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(path: str | Path, policy: WorldModalityPolicy, *, step: int = 0, epoch: int = 0,
                    optimizer: torch.optim.Optimizer | None = None, trainer_state: dict[str, Any] | None = None) -> Path:
    """Write into a temporary sibling folder, then rename: a kill mid-write leaves the old checkpoints intact.
    Weights with NaN/inf are refused before anything is written: such a checkpoint acts at random, and
    as the newest one it would displace the last good one in rotation."""
    final = Path(path)
    state = policy.state_dict()
    keys = checkpoint_keys(policy)
    bad = nonfinite_tensors({k: state[k] for k in keys})
    if bad:
        raise CheckpointError(f"refusing to write checkpoint {final}: tensors {bad[:10]}"
                              f"{' …' if len(bad) > 10 else ''} hold NaN/inf values; expected finite weights.")
    tmp = _atomic_dir(final)
    tensors = _unshared({k: state[k].detach().cpu().contiguous() for k in keys})
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    policy.cfg.to_json(tmp / "config.json")
    enc = getattr(policy, "world_encoder", None)
    meta = {
        "format": FORMAT,
        "shapes": dataclasses.asdict(policy.shapes),
        "world_encoder": enc.config_dict() if enc is not None else None,
        "frozen_backbone_fingerprint": frozen_backbone_fingerprint(policy),
        "data_info": policy.data_info,
        "step": step,
        "epoch": epoch,
    }
    (tmp / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")
    tok = policy.backbone.tokenizer
    if hasattr(tok, "to_str"):
        (tmp / "tokenizer.json").write_text(tok.to_str())
    if optimizer is not None:
        opt_tensors, opt_meta = flatten_optimizer(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({**(trainer_state or {}), "optimizer": opt_meta}, indent=2) + "\n")
    (tmp / DONE_MARKER).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def is_complete(path: str | Path) -> bool:
    return (Path(path) / DONE_MARKER).exists()


def _read_tensors(path: Path, header_only: bool = False) -> dict[str, torch.Tensor] | None:
    """Every tensor of a safetensors file, or with `header_only` just a check that its header is whole
    (safetensors checks the header against the file's length)."""
    if header_only:
        _read_header(path)
        return None
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e}") from e


def _read_header(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (no tensor is read);
    safetensors checks the header against the file's length."""
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e}") from e


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); expected {what}.") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e}); expected {what}.") from None


def _read_meta(root: Path) -> dict:
    if not (root / "policy.json").exists() or not (root / "config.json").exists():
        raise CheckpointError(f"{root} is not a checkpoint folder: expected policy.json and config.json in it.")
    path = root / "policy.json"
    meta = _read_json(path, "the policy description a checkpoint writes (format, shapes, world encoder)")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds a JSON {type(meta).__name__}; expected an object with format and shapes.")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{root}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}.")
    shapes = meta.get("shapes")
    fields = [f.name for f in dataclasses.fields(PolicyShapes)]
    if not (isinstance(shapes, dict) and set(shapes) == set(fields)
            and all(isinstance(shapes[k], int) and shapes[k] >= 0 for k in fields)):
        raise CheckpointError(f"{path}: shapes is {shapes!r}; expected integers {fields}.")
    enc = meta.get("world_encoder")
    if enc is not None and not (isinstance(enc, dict) and {"name", "num_frames", "image_size"} <= set(enc)):
        raise CheckpointError(f"{path}: world_encoder is {enc!r}; expected null or an object with name, num_frames, "
                              f"image_size (the encoder's config).")
    info = meta.get("data_info", {})
    if not isinstance(info, dict) or any(not isinstance(info.get(k, 1), int) or info.get(k, 1) < 1
                                         for k in ("fps", "control_steps_per_frame")):
        raise CheckpointError(f"{path}: data_info is {info!r}; expected an object with integer fps and "
                              f"control_steps_per_frame >= 1.")
    return meta


def _read_config(root: Path) -> ExperimentConfig:
    # A config.json that is not JSON (or holds a value no longer accepted) is a ConfigError naming the file.
    return ExperimentConfig.from_json(root / "config.json")


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
            f"another checkpoint).") from None


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
        _disagree("disable_future_injection", p.disable_future_injection,
                  "model.safetensors " + ("holds" if has("xattn.") else "has no")
                  + " future-injection tensors (xattn.*)")
    if has("prophet.") != needs_world:
        _disagree("lambda_world", w.lambda_world,
                  "model.safetensors " + ("holds" if has("prophet.") else "has no") + " Prophet tensors (prophet.*) "
                  f"with disable_future_injection {p.disable_future_injection}")
    if (meta.get("world_encoder") is not None) != needs_world:
        _disagree("disable_future_injection", p.disable_future_injection,
                  "policy.json " + ("records" if meta.get("world_encoder") else "records no") + " world encoder")
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
        _disagree("chunk_size", p.chunk_size, f"the action head in model.safetensors predicts chunks of {chunk} "
                  f"of {action_dim}-D actions")
    enc = meta.get("world_encoder")
    if enc is not None and enc.get("world_tokens", 1) != w.world_tokens:  # absent: from before world_tokens, N = 1
        _disagree("world_tokens", w.world_tokens, f"policy.json records a world encoder of "
                  f"{enc.get('world_tokens', 1)} spatial token(s) per latent ({enc.get('encoder_id')})")
    if use_memory:
        # N world tokens of latent_dim / N values each, n_memory_tokens memory tokens per world token (policy/model.py).
        pos, proj = shape("memory_pos"), shape("memory_proj.weight")
        if pos is not None and pos[0] != p.n_memory_tokens * w.world_tokens:
            _disagree("n_memory_tokens", p.n_memory_tokens, f"memory_pos in model.safetensors has shape {pos} "
                      f"({w.world_tokens} world token(s) x n_memory_tokens rows)")
        if proj is not None and proj[1] * w.world_tokens != latent_dim:
            _disagree("policy.json shapes.latent_dim", latent_dim, f"memory_proj.weight has shape {proj} "
                      f"({w.world_tokens} world token(s) of {proj[1]} values)")
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
        _disagree("freeze_backbone", p.freeze_backbone,
                  f"model.safetensors {'holds' if base else 'has no'} base weights of the {p.backbone} backbone")
    marker = {"qwen2.5-vl": ".language_model.", "smolvlm": ".text_model."}[p.backbone_family]
    if base and not any(marker in k for k in base):
        _disagree("backbone", p.backbone, f"the backbone tensors in model.safetensors have no {marker.strip('.')} "
                  f"(e.g. {sorted(base)[0]})")
    vision_pos = shape("backbone.model.model.vision_model.embeddings.position_embedding.weight")
    if p.backbone == "tiny-smolvlm" and vision_pos is not None:
        patches = (cfg.data.image_size // TinySmolVLMSize().patch_size) ** 2
        if vision_pos[0] != patches:
            _disagree("image_size", cfg.data.image_size, f"the vision position embedding has {vision_pos[0]} patches "
                      f"({patches} expected)")

    # The world encoder policy.json records (it is rebuilt from there) against the config's windows.
    enc = meta.get("world_encoder")
    if enc is not None:
        if enc["name"] != w.world_encoder:
            _disagree("world_encoder", w.world_encoder, f"policy.json records world encoder {enc['name']!r}")
        if enc["num_frames"] != w.num_frames:
            _disagree("latent_suffix", w.latent_suffix, f"policy.json records a world encoder of "
                      f"m={enc['num_frames']} frames per latent ({enc.get('encoder_id')})")
        if enc.get("pretrained_path") != w.world_encoder_path:
            _disagree("world_encoder_path", w.world_encoder_path,
                      f"policy.json records a world encoder loaded from {enc.get('pretrained_path')!r}")
        if enc["name"] == "tiny-vjepa2" and enc["image_size"] != w.world_image_size:
            _disagree("world_image_size", w.world_image_size,
                      f"policy.json records a world encoder of {enc['image_size']}-px inputs")
        enc_id = enc.get("encoder_id")
        if enc_id and not str(enc_id).startswith(f"{enc['name']}-m{enc['num_frames']}-s{enc['image_size']}-"):
            _disagree("policy.json world_encoder.encoder_id", enc_id,
                      f"its name, m and size say {enc['name']}-m{enc['num_frames']}-s{enc['image_size']}")
        embed = shape("world_encoder.model.encoder.embeddings.patch_embeddings.proj.weight")
        # env_state has no weights at all: its statistics are in policy.json (world/env_state.py).
        stores_weights = enc.get("pretrained_path") is None and enc["name"] != "env_state"
        if (embed is not None) != stores_weights:
            _disagree("world_encoder_path", w.world_encoder_path, "model.safetensors "
                      + ("holds" if embed is not None else "has no") + " world encoder weights")
        if embed is not None and len(embed) == 5 and enc["num_frames"] % embed[2]:
            _disagree("latent_suffix", w.latent_suffix, f"the world encoder embeds frames {embed[2]} at a time")
    frame_size = meta.get("data_info", {}).get("frame_size")
    if isinstance(frame_size, dict):
        cams = tuple(cfg.data.image_keys) + ((w.world_image_key,) if needs_world else ())
        missing = [k for k in cams if k not in frame_size]
        if missing:
            _disagree("image_keys", list(cfg.data.image_keys),
                      f"policy.json records the frame sizes of cameras {sorted(frame_size)} only (not {missing})")


def _check_tokenizer_file(root: Path, cfg: ExperimentConfig) -> None:
    # The tiny backbones' tokenizer is built from the training data: only the checkpoint has it.
    if cfg.policy.backbone.startswith("tiny-") and not (root / "tokenizer.json").is_file():
        raise CheckpointError(f"checkpoint {root} has no tokenizer.json; expected the tokenizer the "
                              f"{cfg.policy.backbone} backbone was trained with (written beside model.safetensors).")


def read_checkpoint_config(path: str | Path) -> ExperimentConfig:
    """The experiment config of a checkpoint, after checking its files are there, its tensor file's
    header is whole and config, policy.json and tensor shapes agree; builds nothing and reads no
    tensor (evaluation's parent process needs only this)."""
    root = Path(path)
    meta = _read_meta(root)
    header = _read_header(root / "model.safetensors")
    cfg = _read_config(root)
    check_consistency(root, cfg, meta, header)
    _check_tokenizer_file(root, cfg)
    return cfg


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> WorldModalityPolicy:
    """Rebuild the policy from its config and load every tensor; a missing or unexpected tensor
    is an error naming it (checkpoints without LoRA or ACT weights once acted at random), and so is
    a config that disagrees with the tensors or policy.json (checked first, before any build).
    `device`: see policy/device.py (`auto` is CUDA when present); everything, the world encoder
    included, ends up there."""
    from ..world.encoder import build_world_encoder
    from .device import resolve_device
    from .factory import build_policy
    from .tokenizer import tokenizer_from_json

    device = resolve_device(device)

    root = Path(path)
    meta = _read_meta(root)
    cfg = _read_config(root)
    check_consistency(root, cfg, meta, _read_header(root / "model.safetensors"))
    _check_tokenizer_file(root, cfg)
    tok_path = root / "tokenizer.json"
    try:
        tokenizer = tokenizer_from_json(tok_path.read_text()) if tok_path.exists() else None
    except Exception as e:  # the tokenizers library raises its own Exception type for a malformed file
        raise CheckpointError(f"{tok_path} is not a valid tokenizer file ({e}).") from None
    enc = None
    if meta.get("world_encoder"):
        enc_cfg = {k: v for k, v in meta["world_encoder"].items() if k != "encoder_id"}
        # Built where the policy will run (the encoder's own "auto" would load pretrained weights
        # onto the GPU even for a CPU load).
        enc = build_world_encoder(**enc_cfg, device=device)
    policy = build_policy(cfg, PolicyShapes(**meta["shapes"]), tokenizer=tokenizer, world_encoder=enc)
    policy.data_info = dict(meta.get("data_info", policy.data_info))
    tensors = _read_tensors(root / "model.safetensors")
    bad = nonfinite_tensors(tensors)
    if bad:
        # Written before training stopped at NaN (or damaged since): it would act NaN in every episode.
        raise CheckpointError(f"checkpoint {root} holds NaN/inf values in tensors {bad[:10]}"
                              f"{' …' if len(bad) > 10 else ''}; expected finite weights (an earlier checkpoint "
                              f"of the run may be finite).")
    expected = set(checkpoint_keys(policy))
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {root} does not match the policy its config builds: "
            f"missing tensors {missing[:10]}{' …' if len(missing) > 10 else ''}; "
            f"unexpected tensors {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}."
        )
    try:
        policy.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {root}: tensor shapes do not match the policy: {e}") from e
    saved_fp, loaded_fp = meta.get("frozen_backbone_fingerprint"), frozen_backbone_fingerprint(policy)
    if saved_fp and loaded_fp != saved_fp:
        raise CheckpointError(
            f"checkpoint {root}: the frozen backbone loaded from {cfg.policy.backbone_path!r} has weights fingerprint "
            f"{loaded_fp!r}, but the checkpoint was trained on {saved_fp!r}. The checkpoint stores only the trained "
            "weights (LoRA, heads); point backbone_path at the model revision it was trained with.")
    if enc is not None:
        enc.refresh_id()
        saved_id = meta["world_encoder"].get("encoder_id")
        if saved_id and enc.encoder_id != saved_id:
            raise CheckpointError(f"checkpoint {root}: world encoder weights hash to {enc.encoder_id!r}, policy.json says {saved_id!r}.")
    return policy.to(device).eval()


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json (step, epoch, batches done in that epoch, optimizer layout), checked."""
    file = Path(path) / "trainer_state.json"
    state = _read_json(file, "the training state a checkpoint writes (step, epoch, optimizer)")
    if not isinstance(state, dict) or not {"step", "epoch", "batches_done_in_epoch", "optimizer"} <= set(state):
        raise CheckpointError(f"{file} lacks step, epoch, batches_done_in_epoch or optimizer; "
                              f"expected the training state a checkpoint writes.")
    return state


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    root = Path(path)
    state = read_trainer_state(root)
    tensors = _read_tensors(root / "optimizer.safetensors")
    optimizer.load_state_dict(unflatten_optimizer(tensors, state.pop("optimizer")))
    return state
