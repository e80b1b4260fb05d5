"""Pretraining outputs on disk: atomic step checkpoints (model, EMA target, optimizer), the loss log and its
plot, and the final Hugging Face model folder with its video processor config."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ConfigError
from ..optim_state import flatten_optimizer, unflatten_optimizer
from .vjepa2_processing import VJEPA2Processing

if TYPE_CHECKING:
    from .pretrain_settings import PretrainSettings

FORMAT = "world-modality-pretrain/1"
DONE_MARKER = "COMPLETE"
SETTINGS_FILE = "pretrain.json"
LOSSES_FILE = "losses.jsonl"
PLOT_FILE = "losses.png"
PROCESSOR_FILE = "video_preprocessor_config.json"
KEEP_CHECKPOINTS = 2


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / DONE_MARKER).exists())


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training checkpoints' flattening, under an "optim." prefix: these tensors share a file with the model's."""
    tensors, meta = flatten_optimizer(opt)
    return {f"optim.{k}": v for k, v in tensors.items()}, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    own = {k.removeprefix("optim."): v for k, v in tensors.items() if k.startswith("optim.")}
    return unflatten_optimizer(own, meta)


def save_checkpoint(
    out: Path, step: int, model: nn.Module, target: nn.Module, opt: torch.optim.Optimizer, identity: dict[str, Any]
) -> Path:
    """checkpoints/step-N: written into a temporary sibling folder with a COMPLETE marker, then renamed, so a
    kill mid-write leaves the previous checkpoint the newest; older ones beyond KEEP_CHECKPOINTS are removed."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a writer killed mid-write: never loaded
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"target.{k}": v.detach().cpu().contiguous() for k, v in target.state_dict().items()})
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    save_file({**tensors, **opt_tensors}, str(tmp / "state.safetensors"), metadata={"format": FORMAT})
    (tmp / "state.json").write_text(
        json.dumps({"format": FORMAT, "step": step, "identity": identity, "optimizer": opt_meta}, indent=1) + "\n"
    )
    (tmp / DONE_MARKER).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, model: nn.Module, target: nn.Module, opt: torch.optim.Optimizer, identity: dict[str, Any]
) -> int:
    """Restore weights, target and optimizer; returns the step. A checkpoint of other settings is refused."""
    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "state.safetensors"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as e:
        raise ConfigError(
            f"pretrain checkpoint {path} is unreadable ({e}); delete it to resume from an older one "
            f"or start over in another --out."
        ) from None
    if meta.get("identity") != identity:
        raise ConfigError(f"pretrain checkpoint {path} was written with other settings; use another --out.")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    target.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("target.")}, strict=True)
    opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    return int(meta["step"])


def read_losses(out: Path) -> list[dict]:
    path = out / LOSSES_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: the step is logged again on resume
            continue
    return rows


def keep_losses_upto(out: Path, step: int) -> None:
    """Steps past the resumed checkpoint were lost with the killed process: they are run, and logged, again."""
    rows = [r for r in read_losses(out) if r.get("step", 0) <= step]
    atomic_write_text(out / LOSSES_FILE, "".join(json.dumps(r) + "\n" for r in rows))


def plot_losses(out: Path) -> Path | None:
    """losses.png: the loss per step and its moving average, and the targets' spread (collapse shows as 0)."""
    rows = read_losses(out)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="per step")
    ax.plot(steps[window - 1 :], smooth, lw=1.6, label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="L1 to layer-normed targets", title="V-JEPA loss")
    ax.legend()
    ax2.plot(steps, [r["target_std"] for r in rows], lw=1.0)
    ax2.set(xlabel="step", ylabel="std over tokens", title="target spread (0 = collapse)", ylim=(0, None))
    fig.tight_layout()
    path = out / PLOT_FILE
    tmp = out / f".{PLOT_FILE}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def processor_config(crop: int) -> dict[str, Any]:
    """The VJEPA2VideoProcessor config of a checkpoint with this crop (what `read_processing` reads back)."""
    p = VJEPA2Processing.for_crop(crop)
    return {
        "crop_size": {"height": crop, "width": crop},
        "size": {"shortest_edge": p.shortest_edge},
        "do_resize": True,
        "do_center_crop": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 2,
        "rescale_factor": 1 / 255,
        "image_mean": list(p.mean),
        "image_std": list(p.std),
        "video_processor_type": "VJEPA2VideoProcessor",
    }


def save_final(out: Path, model: nn.Module, target: nn.Module, settings: PretrainSettings) -> None:
    """The HF folder: the EMA target as the encoder (V-JEPA evaluates its target encoder), the predictor as
    trained. Saved into a temporary folder, then each file renamed into `out`, config.json last."""
    final = copy.deepcopy(model)
    final.encoder.load_state_dict(target.state_dict())
    tmp = out / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for writing one small shard is noise beside the run's own
    try:
        final.save_pretrained(tmp)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    (tmp / PROCESSOR_FILE).write_text(json.dumps(processor_config(settings.world_image_size), indent=2) + "\n")
    names = sorted(p.name for p in tmp.iterdir())
    for name in sorted(names, key=lambda n: n == "config.json"):
        os.replace(tmp / name, out / name)
    tmp.rmdir()
