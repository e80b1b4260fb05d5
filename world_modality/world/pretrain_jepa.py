"""The V-JEPA objective of world-encoder pretraining: multi-block tube masks over the token grid, the context
encoder on visible tokens, and the L1 loss to the EMA target's layer-normed output at the hidden ones."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .vjepa2_processing import VJEPA2Processing, vjepa2_resize_crop

# V-JEPA's two mask generators: many small blocks (short range) and two large ones (long range), each block a
# spatial rectangle of about `scale` of the grid with aspect ratio in ASPECT, repeated over every time step.
MASKS = ((8, 0.15), (2, 0.7))
ASPECT = (0.75, 1.5)


# -- masks ------------------------------------------------------------------------------------------------
def block_mask(rng: np.random.Generator, grid: int, num_blocks: int, scale: float) -> np.ndarray:
    """(grid, grid) bool, True = hidden: the union of `num_blocks` rectangles of about `scale` of the grid each,
    each side strictly shorter than the grid (as V-JEPA's block sizes), so that a visible token remains."""
    hidden = np.zeros((grid, grid), bool)
    for _ in range(num_blocks):
        aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
        area = scale * grid * grid
        h = min(max(1, round(math.sqrt(area * aspect))), max(1, grid - 1))
        w = min(max(1, round(math.sqrt(area / aspect))), max(1, grid - 1))
        top, left = rng.integers(0, grid - h + 1), rng.integers(0, grid - w + 1)
        hidden[top : top + h, left : left + w] = True
    return hidden


def sample_masks(
    rng: np.random.Generator, batch: int, grid: int, depth: int, num_blocks: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context and target token indices, (B, Nc) and (B, Nt), sorted, in the encoder's token order
    (time-major, then rows, then columns). Each sample draws its own spatial mask, repeated over the `depth`
    time steps (tubes: a hidden patch stays hidden all clip long, so it cannot be copied from a neighbouring
    frame); every sample keeps the batch's smallest counts, dropping a random surplus (as V-JEPA's collator)."""
    ctx, tgt = [], []
    for _ in range(batch):
        for _ in range(100):
            hidden = block_mask(rng, grid, num_blocks, scale)
            if 0 < hidden.sum() < grid * grid:
                break
        else:  # a 1x1 grid: nothing can be both seen and predicted
            raise ValueError(f"a {grid}x{grid} token grid is too small to mask; use a larger world_image_size")
        tubes = np.tile(hidden.reshape(-1), depth)
        ctx.append(np.flatnonzero(~tubes))
        tgt.append(np.flatnonzero(tubes))

    def trim(sets: list[np.ndarray]) -> torch.Tensor:
        k = min(len(s) for s in sets)
        return torch.as_tensor(np.stack([np.sort(rng.choice(s, size=k, replace=False)) for s in sets]))

    return trim(ctx), trim(tgt)


# -- the model pieces -------------------------------------------------------------------------------------
def encode_context(encoder: nn.Module, pixels: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """The context encoder: VJEPA2Encoder on the visible tokens only. `VJEPA2Model.forward(context_mask=...)`
    masks the encoder's output after a full pass, where every visible token has already attended to the hidden
    ones: the predictor could then copy the answer. Here the hidden tokens are dropped after the patch
    embedding, and the RoPE attention is given their positions (as the predictor gives its own)."""
    h = encoder.embeddings(pixels)
    h = torch.gather(h, 1, ctx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    for layer in encoder.layer:
        h = layer(h, ctx)[0]
    return encoder.layernorm(h)


def jepa_loss(
    model: nn.Module, target_encoder: nn.Module, pixels: torch.Tensor, ctx: torch.Tensor, tgt: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """L1 between the predictor's output at the hidden tokens and the target encoder's layer-normed output
    there; also the targets' spread (mean over features of their std over tokens and samples), which falls to 0
    if the representation collapses to a constant."""
    with torch.no_grad():
        target = target_encoder(pixel_values_videos=pixels).last_hidden_state
        n_tokens, width = target.shape[1:]
        target = F.layer_norm(target, (width,))
        target = torch.gather(target, 1, tgt.unsqueeze(-1).expand(-1, -1, width))
    h = encode_context(model.encoder, pixels, ctx)
    # The predictor gathers the context from a full-length sequence by `context_mask`: scatter it back there.
    full = h.new_zeros(h.shape[0], n_tokens, width).scatter(1, ctx.unsqueeze(-1).expand(-1, -1, width), h)
    pred = model.predictor(encoder_hidden_states=full, context_mask=[ctx], target_mask=[tgt]).last_hidden_state
    spread = float(target.reshape(-1, target.shape[-1]).std(0).mean())
    return (pred - target).abs().mean(), spread


def preprocess(frames: np.ndarray | torch.Tensor, processing: VJEPA2Processing) -> torch.Tensor:
    """uint8 (B, m, H, W, 3) -> normalised float (B, m, 3, S, S): what `WorldEncoder.preprocess` does for a
    `vjepa2` folder with this processing (shortest edge resized, center crop, ImageNet mean/std), so the encoder
    trains on exactly the inputs it will be given."""
    x = torch.as_tensor(np.asarray(frames))
    b, m, h, w, _ = x.shape
    s = processing.crop_size
    x = vjepa2_resize_crop(x.permute(0, 1, 4, 2, 3).reshape(b * m, 3, h, w), processing.shortest_edge, s)
    x = x.float().div_(255.0).reshape(b, m, 3, s, s)
    mean = torch.tensor(processing.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(processing.std).view(1, 1, 3, 1, 1)
    return (x - mean) / std
