"""The training state a checkpoint carries for an exact resume: trainer_state.json (step, epoch, batches done in
that epoch, the epoch's running sums, the optimizer layout) and optimizer.safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..optim_state import unflatten_optimizer
from .checkpoint_store import CheckpointError, read_json, read_tensors


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json (step, epoch, batches done in that epoch, optimizer layout), checked."""
    file = Path(path) / "trainer_state.json"
    state = read_json(file, "the training state a checkpoint writes (step, epoch, optimizer)")
    if not isinstance(state, dict) or not {"step", "epoch", "batches_done_in_epoch", "optimizer"} <= set(state):
        raise CheckpointError(f"{file} lacks step, epoch, batches_done_in_epoch or optimizer; "
                              f"expected the training state a checkpoint writes.")
    return state


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    root = Path(path)
    state = read_trainer_state(root)
    tensors = read_tensors(root / "optimizer.safetensors")
    optimizer.load_state_dict(unflatten_optimizer(tensors, state.pop("optimizer")))
    return state
