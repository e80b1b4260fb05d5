"""What a study reads back from the files its stages wrote: each stage's code commit (provenance, read defensively:
absent or unreadable is "not recorded"), each arm's world encoder (which weights, and the id of the very weights its
checkpoint was trained with), backbone and action chunking, and the protocol an evaluation ran under (what must
match for two of its episodes to be paired)."""

from __future__ import annotations

import json
from pathlib import Path

NOT_RECORDED = "not recorded"


def read_provenance(*files: Path) -> dict | None:
    """The first record found under a top-level "provenance" key of these JSON files ({"commit", "dirty",
    "continued_by"}: the provenance module's), else None."""
    for f in files:
        try:
            prov = json.loads(Path(f).read_text()).get("provenance")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(prov, dict) and prov.get("commit"):
            return prov
    return None


def commit_text(prov: dict | None) -> str:
    """Every commit a record names, as the provenance module labels them ("abc1234", "abc1234-dirty": uncommitted
    changes), first one first; "not recorded" without a record."""
    from ..provenance import commits

    return ", ".join(commits(prov)) or NOT_RECORDED


def dataset_provenance(dataset: Path) -> dict | None:
    return read_provenance(Path(dataset) / "meta" / "info.json")


def train_provenance(checkpoint: Path) -> dict | None:
    """The run folder's config.json (every commit that trained the run), else the checkpoint's own files."""
    ckpt = Path(checkpoint)
    files = (ckpt.parent.parent / "config.json", ckpt / "trainer_state.json", ckpt / "config.json")
    return read_provenance(*files, ckpt / "policy.json")


def world_encoder_text(cfg) -> str:
    """The world stream as a reader must know it: E0 has none; the default encoder has random weights."""
    w = cfg.world
    if cfg.policy.disable_future_injection:
        return "none"
    if w.world_encoder == "tiny-vjepa2":
        return "tiny V-JEPA-style encoder, random weights"
    if w.world_encoder == "env_state":
        return "simulator object state (privileged, no encoder)"
    made = _pretraining(w.world_encoder_path)
    if made is not None:
        return (
            f"tiny V-JEPA-style encoder, pretrained by pretrain-world on {made['dataset']} ({made['steps']} steps, "
            f"batch {made['batch_size']}, seed {made['seed']})"
        )
    return f"{w.world_encoder} encoder, weights from {w.world_encoder_path}"


# world/pretrain_checkpoint.SETTINGS_FILE, named here so that reading a study's records imports no torch
# (test_world_encoder.py holds the two equal).
PRETRAIN_SETTINGS_FILE = "pretrain.json"


def _pretraining(folder: str | None) -> dict | None:
    """{"dataset" (its folder name), "steps", "batch_size", "seed"} of a pretrain-world folder, else None."""
    if not folder:
        return None
    try:
        made = json.loads((Path(folder) / PRETRAIN_SETTINGS_FILE).read_text())["settings"]
        return {"dataset": Path(made["dataset"]).name, **{k: made[k] for k in ("steps", "batch_size", "seed")}}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def encoder_weights(cfg) -> str:
    """Which weights an arm's world stream has: "none", "state" (privileged object state), "random" (the tiny
    encoder's fixed init) or "pretrained" (loaded from world_encoder_path)."""
    if cfg.policy.disable_future_injection:
        return "none"
    if cfg.world.world_encoder == "env_state":
        return "state"
    return "pretrained" if cfg.world.world_encoder_path else "random"


def backbone_text(cfg) -> str:
    p = cfg.policy
    if p.backbone.startswith("tiny-"):
        return f"{p.backbone}, random init"  # the small configs have no pretrained weights
    return f"{p.backbone} from {p.backbone_path}" + (", frozen" if p.freeze_backbone else "")


def arm_of(cfg, replan_every: int | None) -> dict:
    """How an arm acts and what it is made of; replan_every None: evaluation's default, chunk_size // 2."""
    return {
        "world_encoder": world_encoder_text(cfg),
        "world_encoder_weights": encoder_weights(cfg),
        "backbone": backbone_text(cfg),
        "chunk_size": cfg.policy.chunk_size,
        "replan_every": replan_every or max(1, cfg.policy.chunk_size // 2),
        "memory_mode": "none" if cfg.policy.disable_future_injection else cfg.policy.memory_mode,
    }


def checkpoint_arm(checkpoint: Path, replan_every: int | None) -> dict | None:
    """The arm as its checkpoint was trained, with "world_encoder_id": the id (a hash of the weights) policy.json
    records of the encoder the checkpoint was trained with and is verified against at load; None without one."""
    from ..config import ExperimentConfig

    try:
        arm = arm_of(ExperimentConfig.from_json(Path(checkpoint) / "config.json"), replan_every)
    except Exception:  # described from the study's settings instead (tables.arms)
        return None
    arm["world_encoder_id"] = None
    if arm["world_encoder_weights"] != "none":  # an arm without a world stream may still build an unused encoder
        try:
            encoder = json.loads((Path(checkpoint) / "policy.json").read_text()).get("world_encoder") or {}
            arm["world_encoder_id"] = encoder.get("encoder_id")
        except (OSError, ValueError, AttributeError):
            pass
    return arm


def eval_protocol(settings: dict, suite: str) -> dict:
    """The evaluation's step limit, environment seed and suite, from its settings.json (identity first)."""
    identity = settings.get("identity") or {}
    return {
        "suite": suite,
        "step_limit": identity.get("step_limit", settings.get("step_limit")),
        "seed": identity.get("seed", settings.get("seed")),
    }
