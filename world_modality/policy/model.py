"""The assembled policy ("Model F"): backbone + ACT queries + Prophet + gated cross-attention + head.

Leakage guard: the true future latent `z_future` enters only two places, the world loss and the
explicit `oracle` memory mode. In every other mode the action path sees nothing computed from it.

Spatial world tokens (`world_tokens` N > 1): a latent is N tokens of D values concatenated (world/encoder.py).
The Prophet predicts the flattened N·D vector with one MLP (tokens see each other); the memory projection maps
each token to `n_memory_tokens` tokens with shared weights, so the cross-attention attends over N × n_memory_tokens
memory tokens, each with its own learned position (which grid cell, which slot). N = 1 builds exactly the modules
(names, shapes, initial values) it built before the option existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ExperimentConfig, check_memory_mode
from ..world.prophet import Prophet, world_loss
from .heads import build_head
from .types import Batch
from .xattn import GatedCrossAttention


@dataclass(frozen=True)
class PolicyShapes:
    """Dimensions the data decides; saved with every checkpoint so the policy rebuilds identically."""

    state_dim: int
    action_dim: int
    latent_dim: int


class WorldModalityPolicy(nn.Module):
    def __init__(
        self, cfg: ExperimentConfig, backbone: nn.Module, shapes: PolicyShapes, world_encoder: nn.Module | None
    ):
        super().__init__()
        p, w = cfg.policy, cfg.world
        self.cfg = cfg
        self.shapes = shapes
        # Dataset timing the policy was trained on (how many 20 Hz control steps one action lasts).
        self.data_info: dict = {"fps": 10, "control_steps_per_frame": 1}
        self.backbone = backbone
        hidden = backbone.hidden_size
        self.n_act = p.n_act_tokens
        self.use_memory = not p.disable_future_injection
        self.act_queries = nn.Parameter(torch.randn(p.n_act_tokens, hidden) * 0.02)
        self.state_proj = nn.Linear(shapes.state_dim, hidden)
        self.head = build_head(
            p.action_head, hidden, p.n_act_tokens, p.chunk_size, shapes.action_dim, p.flow_steps, p.flow_time_sampling
        )
        # Normalisation statistics live in the module so a checkpoint cannot lose them.
        self.register_buffer("state_mean", torch.zeros(shapes.state_dim))
        self.register_buffer("state_std", torch.ones(shapes.state_dim))
        self.register_buffer("action_mean", torch.zeros(shapes.action_dim))
        self.register_buffer("action_std", torch.ones(shapes.action_dim))
        self.needs_world = self.use_memory or w.lambda_world > 0
        if self.needs_world:
            self.world_encoder = world_encoder
            self.prophet = Prophet(
                shapes.latent_dim,
                cond_dim=hidden + shapes.state_dim,
                hidden_dim=w.prophet_hidden,
                delta_prediction=w.delta_prediction,
            )
        if self.use_memory:
            self.world_tokens = w.world_tokens
            if shapes.latent_dim % self.world_tokens:
                raise ValueError(
                    f"latent_dim {shapes.latent_dim} is not {self.world_tokens} world tokens of equal "
                    f"width; expected a multiple of world_tokens={self.world_tokens}."
                )
            token_dim = shapes.latent_dim // self.world_tokens
            self.memory_proj = nn.Linear(token_dim, p.n_memory_tokens * hidden)
            self.memory_pos = nn.Parameter(torch.randn(self.world_tokens * p.n_memory_tokens, hidden) * 0.02)
            self.xattn = GatedCrossAttention(hidden)

    # -- statistics -----------------------------------------------------------------------------
    def set_stats(
        self, state_mean, state_std, action_mean, action_std, latent_mean=None, latent_std=None, delta_std=None
    ):
        for name, v in (
            ("state_mean", state_mean),
            ("state_std", state_std),
            ("action_mean", action_mean),
            ("action_std", action_std),
        ):
            getattr(self, name).copy_(torch.as_tensor(v, dtype=torch.float32))
        self.state_std.clamp_(min=1e-6)
        self.action_std.clamp_(min=1e-6)
        if self.needs_world:
            self.prophet.set_stats(latent_mean, latent_std, delta_std)

    # -- forward pieces -------------------------------------------------------------------------
    def _on_device(self, batch: Batch) -> Batch:
        """The batch on the policy's device. DDP moves the tensors of dict inputs, not a dataclass's, so the
        policy moves them itself; a batch already there is returned as it is."""
        device = self.act_queries.device
        if batch.input_ids.device == device:
            return batch
        return batch.to(device, non_blocking=batch.input_ids.device.type == "cpu")  # host -> device only

    def _backbone_pass(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone pass; returns all hidden states and the Prophet's conditioning (a detached
        instruction embedding and the normalised state)."""
        bb = self.backbone
        ids, mask = batch.input_ids, batch.attention_mask
        end, n = batch.act_end, self.n_act  # ACT slots are [end-n, end), STATE sits just before
        embeds = bb.embed(ids).clone()
        state = (batch.state - self.state_mean) / self.state_std
        embeds[:, end - n - 1] = self.state_proj(state).to(embeds.dtype)
        embeds[:, end - n : end] = self.act_queries.to(embeds.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1)
        hidden = bb(ids, embeds, mask, batch.mm_token_type_ids, batch.images)
        text = mask.bool() & (batch.mm_token_type_ids == 0)
        text[:, end - n - 1 :] = False
        text_f = text.unsqueeze(-1).to(embeds.dtype)
        instr = ((embeds * text_f).sum(1) / text_f.sum(1).clamp_min(1.0)).detach()
        return hidden, torch.cat([instr.float(), state], dim=-1)

    def text_loss(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Next-token loss on the chain-of-causation tokens placed after the ACT slots; causal
        attention keeps them invisible to the action path."""
        end, targets, tmask = batch.act_end, batch.text_ids, batch.text_mask
        logits = self.backbone.lm_logits(hidden[:, end - 1 : end - 1 + targets.shape[1]]).float()
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        m = tmask.to(ce.dtype)
        return (ce * m).sum() / m.sum().clamp_min(1.0)

    def predict_future(self, z_t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.prophet(z_t, cond)

    def memory_latent(self, mode: str, z_pred: torch.Tensor, batch: Batch, generator=None) -> torch.Tensor:
        """The latent the action path attends to. Only `oracle` reads this sample's true future;
        `present` reads z_t, the world encoder's latent of the last m frames (history, no foresight);
        `shuffle` reads `z_other`, the memory of a sample of another episode that the caller chose
        (offline: `pipeline.shuffle_memory_rows`; closed loop: `inference/runner.py`)."""
        check_memory_mode(mode, "offline")
        mean, std = self.prophet.latent_mean, self.prophet.latent_std
        if mode == "predicted":
            return z_pred
        if mode == "present":
            return batch.z_t
        if mode == "oracle":
            if batch.z_future is None:
                raise ValueError(
                    "memory mode 'oracle' needs the true future latent `z_future`, which this batch lacks."
                )
            return batch.z_future
        if mode == "zero":  # normalised zero: the memory carries no information about this sample
            return mean.expand_as(z_pred)
        if mode == "random":
            noise = torch.randn(z_pred.shape, generator=generator, device=z_pred.device)
            return mean + std * noise
        if mode == "shuffle":
            # No fallback to the batch's own futures: batches are runs of consecutive frames, so a
            # neighbour's future is almost this sample's and the control would leak the answer.
            if batch.z_other is None:
                raise ValueError(
                    "memory mode 'shuffle' needs `z_other` (one memory per sample, from another episode); "
                    "this batch has none."
                )
            if batch.z_other.shape != z_pred.shape:
                raise ValueError(
                    f"memory mode 'shuffle': `z_other` has shape {tuple(batch.z_other.shape)}, "
                    f"expected {tuple(z_pred.shape)} (one latent per sample)."
                )
            return batch.z_other
        raise AssertionError(f"memory mode {mode!r} passed the check but has no branch here")

    def context(self, batch: Batch, memory_mode: str | None = None, generator=None) -> dict[str, torch.Tensor]:
        batch = self._on_device(batch)
        hidden, cond = self._backbone_pass(batch)
        end = batch.act_end
        act_h = hidden[:, end - self.n_act : end].float()
        out = {"act_h": act_h, "hidden": hidden}
        if self.needs_world:
            z_pred = self.predict_future(batch.z_t, cond)
            out["z_pred"] = z_pred
            if self.use_memory:
                # No mode given (training, and evaluation by default): the configured one, `predicted` or
                # `present` (config.py refuses any other training mode); ablations are chosen per call.
                mode = memory_mode or self.cfg.policy.memory_mode
                z_mem = self.memory_latent(mode, z_pred, batch, generator)
                z_norm = self.prophet.normalize(z_mem)
                b = z_mem.shape[0]
                # (B·N, D) rows through one projection: at N = 1 this is (B, D), the computation of before N existed.
                tokens = z_norm.reshape(b * self.world_tokens, -1)
                mem = self.memory_proj(tokens).view(b, -1, act_h.shape[-1]) + self.memory_pos
                out["act_h"] = self.xattn(act_h, mem)
        return out

    # -- training and acting --------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        batch = self._on_device(batch)
        ctx = self.context(batch)
        target = (batch.actions - self.action_mean) / self.action_std
        out = {"action_loss": self.head.loss(ctx["act_h"], target, batch.action_mask)}
        loss = out["action_loss"]
        if self.needs_world:
            out["world_loss"] = world_loss(ctx["z_pred"], batch.z_t, batch.z_future, self.prophet)
            loss = loss + self.cfg.world.lambda_world * out["world_loss"]
        if self.cfg.policy.lambda_text > 0:
            if batch.text_ids is None:
                raise ValueError("lambda_text > 0 but the batch has no chain-of-causation tokens (`text_ids`).")
            out["text_loss"] = self.text_loss(ctx["hidden"], batch)
            loss = loss + self.cfg.policy.lambda_text * out["text_loss"]
        out["loss"] = loss
        return out

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.losses(batch)

    @torch.no_grad()
    def predict_actions(
        self, batch: Batch, memory_mode: str | None = None, generator=None, return_context: bool = False
    ):
        """-> (B, chunk, action_dim) actions in the dataset's units (and the context, if asked)."""
        ctx = self.context(batch, memory_mode, generator)
        actions = self.head.sample(ctx["act_h"], generator=generator) * self.action_std + self.action_mean
        return (actions, ctx) if return_context else actions

    def gate(self) -> float | None:
        return float(self.xattn.gate.detach()) if self.use_memory else None
