"""Action heads over the ACT hidden states: MSE chunk regression and flow matching."""

from __future__ import annotations

import math

import torch
from torch import nn


class MSEHead(nn.Module):
    """Regresses the whole (chunk, action_dim) chunk in normalised units."""

    def __init__(self, hidden_size: int, n_act_tokens: int, chunk_size: int, action_dim: int):
        super().__init__()
        self.chunk_size, self.action_dim = chunk_size, action_dim
        self.net = nn.Sequential(
            nn.LayerNorm(hidden_size * n_act_tokens),
            nn.Linear(hidden_size * n_act_tokens, 512),
            nn.GELU(),
            nn.Linear(512, chunk_size * action_dim),
        )

    def loss(self, act_h: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        err = (self.sample(act_h) - actions) ** 2
        return _masked_mean(err, mask)

    def sample(self, act_h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(act_h.flatten(1)).view(-1, self.chunk_size, self.action_dim)


class FlowHead(nn.Module):
    """Flow matching: x_t = (1−t)·noise + t·a, target velocity a − noise; Euler from noise at t=0 to
    the action at t=1. A regression head averages the modes of a multimodal action distribution;
    this one samples one of them."""

    def __init__(self, hidden_size, n_act_tokens, chunk_size, action_dim, steps=10, time_sampling="beta", width=256):
        super().__init__()
        self.chunk_size, self.action_dim, self.steps, self.time_sampling = chunk_size, action_dim, steps, time_sampling
        self.cond = nn.Sequential(
            nn.LayerNorm(hidden_size * n_act_tokens), nn.Linear(hidden_size * n_act_tokens, width)
        )
        self.net = nn.Sequential(
            nn.Linear(width + 64 + chunk_size * action_dim, width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, chunk_size * action_dim),
        )

    def _time_embed(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.linspace(0, math.log(1000.0), 32, device=t.device))
        ang = t[:, None] * freqs[None] * math.pi
        return torch.cat([ang.sin(), ang.cos()], dim=-1)

    def velocity(self, cond: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([cond, self._time_embed(t), x_t.flatten(1)], dim=-1)
        return self.net(inp).view(-1, self.chunk_size, self.action_dim)

    def sample_time(self, n: int, device, generator=None) -> torch.Tensor:
        if self.time_sampling == "uniform":
            return torch.rand(n, device=device, generator=generator)
        # pi0's schedule: Beta(1.5, 1) on s, t = 1 − 0.999·s, which weights the noisy end (small t here).
        beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
        s = beta.sample((n,)).to(device)
        return 1.0 - (0.001 + 0.999 * s)

    def loss(self, act_h: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cond = self.cond(act_h.flatten(1))
        noise = torch.randn_like(actions)
        t = self.sample_time(actions.shape[0], actions.device)
        x_t = (1 - t)[:, None, None] * noise + t[:, None, None] * actions
        err = (self.velocity(cond, x_t, t) - (actions - noise)) ** 2
        return _masked_mean(err, mask)

    def sample(self, act_h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        cond = self.cond(act_h.flatten(1))
        x = torch.randn(act_h.shape[0], self.chunk_size, self.action_dim, device=act_h.device, generator=generator)
        dt = 1.0 / self.steps
        for i in range(self.steps):
            t = torch.full((x.shape[0],), i * dt, device=x.device)
            x = x + dt * self.velocity(cond, x, t)
        return x


def _masked_mean(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(err.dtype)[..., None].expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def build_head(
    kind: str, hidden_size: int, n_act_tokens: int, chunk_size: int, action_dim: int, steps: int, time_sampling: str
) -> nn.Module:
    if kind == "mse":
        return MSEHead(hidden_size, n_act_tokens, chunk_size, action_dim)
    if kind == "flow":
        return FlowHead(hidden_size, n_act_tokens, chunk_size, action_dim, steps, time_sampling)
    raise ValueError(f"action_head must be 'mse' or 'flow', got {kind!r}.")
