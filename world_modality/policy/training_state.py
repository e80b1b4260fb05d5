"""The training state a checkpoint carries for an exact resume: trainer_state.json (step, epoch, batches done in
that epoch, the epoch's running sums, optimizer updates done, the optimizer layout), optimizer.safetensors and,
with an EMA of the weights, ema.safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..optim_state import unflatten_optimizer
from .checkpoint_store import EMA_FILE, CheckpointError, read_json, read_tensors


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json (step, epoch, batches done in that epoch, optimizer layout), checked."""
    file = Path(path) / "trainer_state.json"
    state = read_json(file, "the training state a checkpoint writes (step, epoch, optimizer)")
    if not isinstance(state, dict) or not {"step", "epoch", "batches_done_in_epoch", "optimizer"} <= set(state):
        raise CheckpointError(
            f"{file} lacks step, epoch, batches_done_in_epoch or optimizer; "
            f"expected the training state a checkpoint writes."
        )
    return state


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    root = Path(path)
    state = read_trainer_state(root)
    tensors = read_tensors(root / "optimizer.safetensors")
    optimizer.load_state_dict(unflatten_optimizer(tensors, state.pop("optimizer")))
    return state


def load_ema(path: str | Path) -> dict[str, torch.Tensor]:
    """The EMA weights a checkpoint of a run with `ema_decay` > 0 holds (by state-dict name)."""
    file = Path(path) / EMA_FILE
    if not file.exists():
        raise CheckpointError(
            f"{path} has no {EMA_FILE}, but the run keeps an EMA of its weights (ema_decay > 0); "
            f"expected a checkpoint written by such a run."
        )
    return read_tensors(file)
