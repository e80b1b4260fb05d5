"""The one observation preprocessor: observations (`types.Observation`, or dicts in the dataset schema) -> `Batch`.

Training batches and closed-loop evaluation both pass through `ObservationPreprocessor.__call__`,
so image size, camera order, prompt and token layout cannot differ between the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..images import resize_frames
from .prompt import build_prompt
from .types import Batch, Observation


class ObservationPreprocessor:
    """Token layout per sample, left-padded to the batch's longest prompt (`types.Batch` states it):
    [pad…][prompt with image tokens][STATE][ACT × n_act] (+ [chain-of-causation text][pad…] in E4
    training); STATE and ACT sit at the same positions in every row, so the backbone's hidden
    states there are read without gathering."""

    def __init__(
        self, backbone, image_keys: Sequence[str], image_size: int, n_act_tokens: int, max_text_tokens: int = 48
    ):
        backbone.check_image_size(image_size)
        self.backbone = backbone
        self.image_keys = tuple(image_keys)
        self.image_size = image_size
        self.n_act_tokens = n_act_tokens
        self.max_text_tokens = max_text_tokens
        self.tokens_per_image = backbone.tokens_per_image(image_size, image_size)
        self._prompt_cache: dict[str, list[int]] = {}

    # -- text -----------------------------------------------------------------------------------
    def prompt_ids(self, instruction: str) -> list[int]:
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            bb = self.backbone
            raw = bb.encode_text(build_prompt(instruction, len(self.image_keys), bb.family))
            img, block = bb.image_token_id, bb.image_block(self.tokens_per_image)
            n_placeholders = sum(1 for t in raw if t == img)
            if n_placeholders != len(self.image_keys):
                raise ValueError(
                    f"prompt for {instruction!r} tokenised to {n_placeholders} image placeholders, "
                    f"expected {len(self.image_keys)}; the tokenizer splits {bb.image_token!r}."
                )
            ids = []
            for t in raw:
                ids.extend(block if t == img else [t])
            self._prompt_cache[instruction] = ids
        return ids

    def tokens(self, instructions: Sequence[str], texts: Sequence[str | None] | None = None) -> dict[str, Any]:
        """The token fields of a `Batch`: prompt block left-padded to a common end (`act_end`, an int);
        optional chain-of-causation texts follow it, right-padded, as next-token targets (`text_ids`, `text_mask`)."""
        pad, img = self.backbone.pad_token_id, self.backbone.image_token_id
        tails = [self.prompt_ids(s) + [pad] * (1 + self.n_act_tokens) for s in instructions]
        length = max(len(t) for t in tails)
        text_ids = [self.text_ids(t) if t else [] for t in texts] if texts is not None else []
        extra = max((len(t) for t in text_ids), default=0)
        ids = torch.full((len(tails), length + extra), pad, dtype=torch.long)
        mask = torch.zeros((len(tails), length + extra), dtype=torch.long)
        for i, t in enumerate(tails):
            ids[i, length - len(t) : length] = torch.tensor(t)
            mask[i, length - len(t) : length] = 1
        out = {"input_ids": ids, "attention_mask": mask, "act_end": length}
        if texts is not None:
            tmask = torch.zeros((len(tails), extra), dtype=torch.bool)
            for i, t in enumerate(text_ids):
                ids[i, length : length + len(t)] = torch.tensor(t, dtype=torch.long)
                mask[i, length : length + len(t)] = 1
                tmask[i, : len(t)] = True
            out["text_ids"], out["text_mask"] = ids[:, length:].clone(), tmask
        out["mm_token_type_ids"] = (ids == img).int()
        return out

    def text_ids(self, text: str) -> list[int]:
        return self.backbone.encode_text(text.strip())[: self.max_text_tokens - 1] + [self.backbone.text_end_id]

    # -- images ---------------------------------------------------------------------------------
    def observations(self, observations: Sequence[Observation | Mapping[str, Any]]) -> list[Observation]:
        """Dataset-schema dicts as `Observation`s (with this policy's cameras); `Observation`s as they are."""
        return [o if isinstance(o, Observation) else Observation.from_sample(o, self.image_keys) for o in observations]

    def images(self, observations: Sequence[Observation | Mapping[str, Any]]) -> torch.Tensor:
        """-> (B, n_cams, 3, S, S) float in [0, 1]. Images of another size go through the one uint8
        resize (data/frames.py) that also made the training frames, so every path sees the same op."""
        observations = self.observations(observations)
        per_cam = []
        for key in self.image_keys:
            if key not in observations[0].images:
                raise KeyError(f"observation lacks camera {key!r}; it has {sorted(observations[0].images)}.")
            arr = np.stack([o.images[key] for o in observations])
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
                raise ValueError(f"camera {key!r} must be uint8 (H, W, 3) images, got {arr.dtype} {arr.shape[1:]}.")
            arr = resize_frames(arr, self.image_size)
            per_cam.append(torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0))
        return torch.stack(per_cam, dim=1)

    def __call__(self, observations: Sequence[Observation | Mapping[str, Any]]) -> Batch:
        observations = self.observations(observations)
        texts = [o.text for o in observations] if any(o.text is not None for o in observations) else None
        return Batch(
            **self.tokens([o.instruction for o in observations], texts),
            images=self.images(observations),
            state=torch.as_tensor(np.stack([np.asarray(o.state, dtype=np.float32) for o in observations])),
        )
