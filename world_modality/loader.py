"""Batches for training and validation: assembled in the training process, or by DataLoader worker processes
(pinned memory on CUDA, prefetch) that only read and collate the samples the main process chose, in its order."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .optim import Ema


def load_batches(
    samples: torch.utils.data.Dataset,
    collate: Callable[[list], Any],
    index_batches: Sequence[np.ndarray],
    *,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
) -> Iterable[Any]:
    """The collated batches of `index_batches` (sample indices), in that order. With `num_workers` 0 they are
    built here, one at a time; otherwise worker processes build them ahead, `prefetch_factor` each. Workers
    draw no random numbers (augmentation runs in the training process, seeded per step), so a batch is the
    same whichever process assembles it."""
    chosen = [[int(i) for i in b] for b in index_batches]
    if num_workers == 0:
        return (collate([samples[i] for i in b]) for b in chosen)
    # A tokenizer used before the fork would otherwise warn in every worker and drop its own threads.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return torch.utils.data.DataLoader(
        samples,
        batch_sampler=chosen,
        collate_fn=collate,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        pin_memory=pin_memory,
    )


@torch.no_grad()
def loss_sums(model: torch.nn.Module, loaded: Iterable[Any], seed: int) -> tuple[dict[str, float], int]:
    """Per-loss sums over samples (each batch's mean times its size) and the sample count, in eval mode,
    without augmentation; the noise the losses draw is seeded the same every time, so epochs compare."""
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    n = 0
    for batch in loaded:
        size = len(batch.actions)
        for k, v in model(batch).items():
            sums[k] = sums.get(k, 0.0) + float(v) * size
        n += size
    model.train(was_training)
    return sums, n


def validation_losses(
    accelerator,
    model: torch.nn.Module,
    ema: Ema | None,
    samples: torch.utils.data.Dataset,
    collate: Callable[[list], Any],
    batch_size: int,
    *,
    seed: int,
    **loader_options,
) -> dict[str, float]:
    """Mean losses on held-out samples as `val_<loss>` (each process takes every n-th batch), with the weights
    evaluation loads (the EMA when kept). Offline losses tell training health, never which policy acts better."""
    n_proc = accelerator.num_processes
    index_batches = [np.arange(i, min(i + batch_size, len(samples))) for i in range(0, len(samples), batch_size)]
    with ema.applied(model) if ema is not None else contextlib.nullcontext():
        loaded = load_batches(samples, collate, index_batches[accelerator.process_index :: n_proc], **loader_options)
        sums, n = loss_sums(model, loaded, seed)
    keys = sorted(sums) or ["loss"]
    totals = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(n)], dtype=torch.float64, device=accelerator.device)
    if n_proc > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    return {f"val_{k}": v / max(float(totals[-1]), 1.0) for k, v in zip(keys, totals[:-1].tolist())}
