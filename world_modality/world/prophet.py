"""The Prophet: predicts the future world latent ẑ_{t+k} from z_t (as a delta by default)."""

from __future__ import annotations

import torch
from torch import nn

STD_FLOOR = 1e-6


def _as_vector(x, dim: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32).reshape(-1)
    if t.numel() != dim:
        raise ValueError(f"{name} has {t.numel()} values, expected latent_dim={dim}")
    return t


class Prophet(nn.Module):
    """MLP on normalized z_t (+ optional conditioning), output in raw latent units.

    delta mode:    ẑ = z_t + delta_std * mlp([ (z_t-mean)/std, cond ])
    absolute mode: ẑ = mean + std * mlp([ (z_t-mean)/std, cond ])
    The statistics are buffers, so a checkpoint carries the units the Prophet was trained in.
    """

    def __init__(
        self,
        latent_dim: int,
        cond_dim: int = 0,
        hidden_dim: int = 256,
        num_layers: int = 2,
        delta_prediction: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.latent_dim = int(latent_dim)
        self.cond_dim = int(cond_dim)
        self.delta_prediction = bool(delta_prediction)
        layers: list[nn.Module] = []
        width = self.latent_dim + self.cond_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        self.mlp = nn.Sequential(*layers, nn.Linear(width, self.latent_dim))
        if self.delta_prediction:
            # Untrained output is exactly z_t, the copy-last baseline: training can only improve on it.
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        self.register_buffer("latent_mean", torch.zeros(self.latent_dim))
        self.register_buffer("latent_std", torch.ones(self.latent_dim))
        self.register_buffer("delta_std", torch.ones(self.latent_dim))

    @torch.no_grad()
    def set_stats(self, latent_mean, latent_std, delta_std) -> None:
        d = self.latent_dim
        self.latent_mean.copy_(_as_vector(latent_mean, d, "latent_mean"))
        self.latent_std.copy_(_as_vector(latent_std, d, "latent_std").clamp_min(STD_FLOOR))
        self.delta_std.copy_(_as_vector(delta_std, d, "delta_std").clamp_min(STD_FLOOR))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def forward(self, z_t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if z_t.shape[-1] != self.latent_dim:
            raise ValueError(f"z_t last dim {z_t.shape[-1]} != latent_dim {self.latent_dim}")
        x = self.normalize(z_t)
        if self.cond_dim:
            if cond is None or cond.shape[-1] != self.cond_dim:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"Prophet expects cond with last dim {self.cond_dim}, got {got}")
            x = torch.cat([x, cond.to(x.dtype)], dim=-1)
        elif cond is not None:
            raise ValueError("Prophet was built with cond_dim=0 but a cond tensor was given")
        y = self.mlp(x)
        if self.delta_prediction:
            return z_t + self.delta_std * y
        return self.latent_mean + self.latent_std * y


def world_loss(
    prophet_out_raw: torch.Tensor, z_t: torch.Tensor, z_future: torch.Tensor, prophet: Prophet
) -> torch.Tensor:
    """Training loss in the Prophet's normalized units (delta or absolute, per its mode)."""
    if prophet.delta_prediction:
        pred = (prophet_out_raw - z_t) / prophet.delta_std
        target = (z_future - z_t) / prophet.delta_std
    else:
        pred = (prophet_out_raw - prophet.latent_mean) / prophet.latent_std
        target = (z_future - prophet.latent_mean) / prophet.latent_std
    return torch.mean((pred - target) ** 2)


def world_mse(z_pred: torch.Tensor, z_future: torch.Tensor, latent_std: torch.Tensor) -> torch.Tensor:
    """Predictor-independent metric; the copy-last baseline is world_mse(z_t, z_future, std)."""
    return torch.mean(((z_pred - z_future) / latent_std) ** 2)


def compute_delta_std(z_t, z_future) -> torch.Tensor:
    """Per-dimension std of z_{t+k} - z_t over training pairs, floored (for Prophet.set_stats)."""
    d = torch.as_tensor(z_future, dtype=torch.float64) - torch.as_tensor(z_t, dtype=torch.float64)
    return d.std(dim=0, unbiased=False).clamp_min(STD_FLOOR).float()
