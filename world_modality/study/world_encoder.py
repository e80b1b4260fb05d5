"""The study's world-encoder pretraining stage and which encoder each arm uses: `pretrain-world` run once per
training dataset (each suite's, or the --joint one) on the study's own demonstrations, kept beside the datasets in
the --data folder so that shards share one encoder, and the run settings that point the arms at it."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

ENCODERS_DIR = "world-encoders"  # under --data: shards that share the datasets share the encoders too
CHOICES = ("pretrained", "random")
LOG_FILE = "pretrain-world.log"


@dataclass(frozen=True)
class PretrainBudget:
    steps: int  # pretrain-world optimiser steps
    batch_size: int  # windows per step


# cpu: at batch 32 on 64-px crops a step took 87-117 ms on 2 busy cores (200 steps: 22 s), so 2000 steps are 3-4
# minutes. Pretraining runs on CPU cores on every machine (pretrain-world has no device): gpu is larger, not faster.
PRETRAIN_BUDGETS = {"cpu": PretrainBudget(steps=2000, batch_size=32), "gpu": PretrainBudget(steps=5000, batch_size=64)}


def encoder_of(s, experiment: str) -> str:
    """The world encoder an arm of study `s` uses: "none" (no world stream), "state" (the simulator's object state),
    "pretrained" (the study's pretrain-world encoder) or "random" (the tiny encoder's fixed random init)."""
    from ..config import PRESETS

    preset = PRESETS[experiment]
    if preset.get("disable_future_injection"):
        return "none"
    name = preset.get("world_encoder", "tiny-vjepa2")
    if name == "env_state":
        return "state"
    if name == "vjepa2":  # E2-Pretrained is E2 with a pretrained encoder: the study's, whatever --world-encoder says
        return "pretrained"
    return s.world_encoder


def governed(s) -> list[str]:
    """The arms whose image encoder --world-encoder chooses (E2, E2-Present, E2-Flow, E4)."""
    from ..config import PRESETS

    return [
        e
        for e in s.experiments
        if not PRESETS[e].get("disable_future_injection") and PRESETS[e].get("world_encoder") is None
    ]


def uses_pretrained(s) -> bool:
    return any(encoder_of(s, e) == "pretrained" for e in s.experiments)


def encoder_dir(s, dataset: Path) -> Path:
    """Where the encoder of `dataset` lives: its name and every setting that changes its weights, so studies and
    shards that share --data find it and never take one of other settings."""
    tag = f"{s.world_image_size}px-s{s.pretrain_steps}-b{s.pretrain_batch_size}-seed{s.pretrain_seed}"
    return Path(s.data) / ENCODERS_DIR / f"{Path(dataset).name}-{tag}"


def encoder_overrides(s, experiment: str, dataset: Path) -> dict:
    """The run settings that give an arm the study's pretrained encoder; {} for every other arm."""
    if encoder_of(s, experiment) != "pretrained":
        return {}
    return {"world_encoder": "vjepa2", "world_encoder_path": str(encoder_dir(s, dataset))}


def pretrain_settings(s, dataset: Path, configs: dict):
    """pretrain-world's settings for `dataset`: the study's sizes and pretraining budget, and the windows, camera,
    split and keys of the runs that will use the encoder (`configs`: {experiment: its run config}, so the two cannot
    drift)."""
    from ..config import ConfigError
    from ..world.pretrain_settings import PretrainSettings

    windows = {}
    for e, cfg in configs.items():
        w, d = cfg.world, cfg.data
        windows[e] = (w.latent_suffix, w.frame_stride, w.world_image_key, d.val_fraction, d.instruction_key)
    if len(set(windows.values())) > 1:
        raise ConfigError(
            f"the arms that share the pretrained world encoder read other windows ({windows}: latent suffix, frame "
            "stride, camera, held-out share, instruction key); one encoder cannot serve them all."
        )
    suffix, stride, camera, val_fraction, instruction_key = next(iter(windows.values()))
    steps = s.pretrain_steps
    return PretrainSettings(
        dataset=str(dataset),
        world_image_key=camera,
        image_size=s.image_size,
        world_image_size=s.world_image_size,
        latent_suffix=suffix,
        frame_stride=stride,
        val_fraction=val_fraction,
        instruction_key=instruction_key,
        steps=steps,
        batch_size=s.pretrain_batch_size,
        seed=s.pretrain_seed,
        save_every=max(1, min(250, steps // 4)),  # a kill loses at most a quarter of the steps (250 at most)
    )


# The tiny encoder's patch side (world/vjepa2_loading.tiny_vjepa2_config), named here so that checking a study's
# flags imports no torch; test_world_encoder.py holds the two equal.
PATCH = 16


def check_pretraining(s) -> None:
    """Pretraining's size rule, before anything runs, in the study's flag names (the budget's numbers are checked
    where they are parsed; the windows are the runs' own, checked by their config)."""
    from ..config import ConfigError

    if s.world_image_size % PATCH or s.world_image_size < 2 * PATCH:
        raise ConfigError(
            f"--world-image-size {s.world_image_size}: pretraining the world encoder needs a multiple of its patch "
            f"size {PATCH}, at least {2 * PATCH} (a 2x2 token grid, so some tokens can be hidden and others seen); "
            "or --world-encoder random."
        )


def is_finished(out: Path, settings) -> bool:
    """Whether `out` holds the whole pretraining `settings` ask for, of this very dataset (its fingerprint)."""
    import dataclasses

    from ..world.pretrain_checkpoint import SETTINGS_FILE, checkpoints
    from ..world.pretrain_settings import RESUMABLE
    from .artifacts import dataset_hash

    found = checkpoints(out)
    if not (found and (out / "config.json").exists() and (out / "model.safetensors").exists()):
        return False
    if int(found[-1].name.split("-")[1]) != settings.steps:
        return False
    try:
        saved = json.loads((out / SETTINGS_FILE).read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # pretrain() itself names what is wrong with the folder
    mine = {k: v for k, v in dataclasses.asdict(settings).items() if k not in RESUMABLE}
    return saved == {**mine, "dataset_fingerprint": dataset_hash(Path(settings.dataset))}


def final_loss(out: Path) -> float | None:
    from ..world.pretrain_checkpoint import read_losses

    rows = read_losses(out)
    return rows[-1]["loss"] if rows else None


def pretrain_stage(s, suite: str, dataset: str, configs: dict) -> tuple[dict, Path]:
    """Pretrain (or resume, or find finished) the encoder of `suite`'s dataset for the runs of `configs`
    (pretrain_settings); its console output goes to <out>/runs/<suite>/pretrain-world.log. Returns the stage's
    record and the encoder folder. Shards started together wait on a lock beside the folder, so one of them
    pretrains and the others find it finished."""
    from ..cache_dirs import locked
    from ..world.pretrain import pretrain

    settings = pretrain_settings(s, Path(dataset), configs)
    out = encoder_dir(s, Path(dataset))
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = Path(s.out) / "runs" / suite
    log_dir.mkdir(parents=True, exist_ok=True)
    with locked(out.parent / f".{out.name}.lock"):
        if not is_finished(out, settings):
            with (
                (log_dir / LOG_FILE).open("a") as log,
                contextlib.redirect_stdout(log),
                contextlib.redirect_stderr(log),
            ):
                pretrain(settings, out, progress=False, log=print)
    record = {
        "encoder": out.name,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "world_image_size": settings.world_image_size,
        "final_loss": final_loss(out),
    }
    return record, out


def describe(record: dict | None) -> str:
    """How a report names the study's pretrained encoder."""
    if not record or "encoder" not in record:
        return "tiny V-JEPA-style encoder, pretrained by pretrain-world on the study's demonstrations"
    return (
        f"tiny V-JEPA-style encoder, pretrained by pretrain-world on the study's demonstrations ({record['steps']} "
        f"steps, batch {record['batch_size']}, seed {record['seed']})"
    )


def render_encoders(encoders: dict[str, dict], seconds: dict[str, float]) -> list[str]:
    """The report's pretraining section: one row per training dataset, its settings, hash, loss and time."""
    if not encoders:
        return []
    lines = [
        "",
        "## World-encoder pretraining",
        "",
        "`world-modality pretrain-world` on each training dataset's own demonstrations (the training episodes of the "
        "runs' split), once per dataset; every arm with a pretrained encoder that trains on that dataset uses this "
        "one. Its time is the stage `pretrain/...` below, counted apart from training.",
        "",
        "| Training suite | Encoder | Steps | Batch | Seed | Final loss | sha256 (model.safetensors) | Seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for suite, r in encoders.items():
        sec = seconds.get(f"pretrain/{suite}")
        when = f"{sec:.0f}" if sec is not None else "not recorded"
        if "not_run" in r:
            lines.append(f"| {suite} | not run ({r['not_run']}) | | | | | | {when} |")
            continue
        loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "not recorded"
        sha = (r.get("sha256") or {}).get("model.safetensors", "not recorded")[:16]
        lines.append(
            f"| {suite} | {r['encoder']} | {r['steps']} | {r['batch_size']} | {r['seed']} | {loss} | {sha} | {when} |"
        )
    return lines
