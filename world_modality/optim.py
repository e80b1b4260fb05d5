"""The optimisation schedule of training: the learning rate at each update (linear warmup, then constant or
cosine decay) and an exponential moving average (EMA) of the trainable weights, which evaluation loads."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from .config.sections import LR_SCHEDULES


def lr_at(update: int, base_lr: float, *, warmup: int, schedule: str, total: int) -> float:
    """Learning rate of optimizer update `update` (0-based) of `total`: linear warmup over the first
    `warmup` updates, then `base_lr` (constant) or a cosine decay to 0 at `total`. A pure function of the
    update count, so a resumed run needs only that count."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}.")
    if update < warmup:
        return base_lr * (update + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_lr(optimizer: torch.optim.Optimizer, update: int, base_lr: float, **schedule) -> None:
    """Set every parameter group's learning rate for optimizer update `update` (see `lr_at`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(update, base_lr, **schedule)


def nonfinite_params(model: torch.nn.Module) -> list[str]:
    """Trainable parameters holding NaN/inf after an update; one synchronisation for all of them."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu()
    return [n for (n, _), ok in zip(named, finite.tolist()) if not ok]


class Ema:
    """An exponential moving average of a model's trainable parameters, updated after each optimizer
    update: ema = decay * ema + (1 - decay) * weight. Kept in float32 on the parameters' device."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for n in self.names:
            self.shadow[n].lerp_(params[n].detach().float(), 1.0 - self.decay)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averaged weights, by state-dict name, on the CPU (what a checkpoint's ema.safetensors holds)."""
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore a saved average (resume); its names must be exactly this model's trainable parameters."""
        if set(tensors) != set(self.names):
            missing, extra = sorted(set(self.names) - set(tensors)), sorted(set(tensors) - set(self.names))
            raise ValueError(
                f"saved EMA weights do not match the trainable parameters: missing {missing[:5]}, "
                f"unexpected {extra[:5]}."
            )
        for n in self.names:
            self.shadow[n].copy_(tensors[n])

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block the model holds the averaged weights; the trained ones come back after it."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            raw = {n: params[n].detach().clone() for n in self.names}
            for n in self.names:
                params[n].copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(raw[n])
