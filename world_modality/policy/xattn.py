"""Tanh-gated cross-attention from the ACT hidden states to the future-memory tokens."""

from __future__ import annotations

import torch
from torch import nn


class GatedCrossAttention(nn.Module):
    """act_h' = act_h + tanh(gate) * xattn(act_h, memory), gate = 0 at init so the branch starts as
    the identity and the policy begins exactly as its E0 twin."""

    def __init__(self, hidden_size: int, num_heads: int = 4):
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden_size)
        self.norm_kv = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, act_h: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(memory)
        out, _ = self.attn(self.norm_q(act_h), kv, kv, need_weights=False)
        return act_h + torch.tanh(self.gate) * out
