"""Typed contracts between data and policy: `Observation` (one step, before preprocessing) and `Batch` (the
model's input tensors after preprocessing and collation), shared by training, offline analysis and closed loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Keys of an observation in the dataset schema (LeRobot), as samples and the simulator give them.
TASK_KEY = "task"
STATE_KEY = "observation.state"
TEXT_KEY = "coc_text"  # training only: the chain-of-causation annotation of the frame


@dataclass(frozen=True)
class Observation:
    """What one step gives a policy before preprocessing.

    images: camera key -> uint8 (H, W, 3) frame, any size (the preprocessor resizes to the policy's).
    state: (state_dim,) float32 proprioception. instruction: the task text. text: the frame's
    chain-of-causation annotation (training only; "" for an unannotated frame of an annotated
    dataset, None without annotations). world_frames: the world encoder's window,
    (m, H, W, 3) uint8 frames or (m, D) float environment states; z_t: its latent (D,) when already encoded."""

    images: Mapping[str, np.ndarray]
    state: np.ndarray
    instruction: str
    text: str | None = None
    world_frames: np.ndarray | None = None
    z_t: np.ndarray | None = None

    @classmethod
    def from_sample(cls, sample: Mapping[str, Any], image_keys: Sequence[str]) -> Observation:
        """The observation of a dataset-schema dict (a training sample or a simulator observation)."""
        images = {}
        for key in image_keys:
            if key not in sample:
                raise KeyError(f"observation lacks camera {key!r}; it has {sorted(sample.keys())}.")
            images[key] = np.asarray(sample[key])
        for key in (STATE_KEY, TASK_KEY):
            if key not in sample:
                raise KeyError(f"observation lacks {key!r}; it has {sorted(sample.keys())}.")
        # A sample of an annotated dataset says "" for a frame without text, so its batch still has text targets.
        text = (sample[TEXT_KEY] or "") if TEXT_KEY in sample else None
        return cls(
            images=images,
            state=np.asarray(sample[STATE_KEY], dtype=np.float32),
            instruction=sample[TASK_KEY],
            text=text,
        )


# (name, ndim) of every tensor field whose first dimension is the batch size.
_RANKS = {
    "input_ids": 2,
    "attention_mask": 2,
    "mm_token_type_ids": 2,
    "images": 5,
    "state": 2,
    "text_ids": 2,
    "text_mask": 2,
    "actions": 3,
    "action_mask": 2,
    "row": 1,
    "z_t": 2,
    "z_future": 2,
    "z_other": 2,
}


@dataclass(frozen=True)
class Batch:
    """Model inputs of B samples, after `ObservationPreprocessor` (and, for training, `pipeline.make_collate`).

    Token layout, shared by every row: L = act_end + T positions,
        [pad…][prompt with image tokens][STATE][ACT × n_act] | [chain-of-causation text][pad…]
        `------------- left-padded, ends at act_end -------´   `-- right-padded, T tokens --´
    Left padding is the invariant the model relies on: STATE sits at act_end - n_act - 1 and the ACT slots
    at [act_end - n_act, act_end) in every row, so their hidden states are read without gathering.
    `__post_init__` checks it (attention_mask non-decreasing up to act_end) when the mask is on the CPU.

    input_ids (B, L) long; attention_mask (B, L) long, 1 = attended; mm_token_type_ids (B, L) int, 1 = image
    token; act_end: int, the end of the prompt block; images (B, n_cams, 3, S, S) float in [0, 1];
    state (B, state_dim) float32, in dataset units.
    Optional, by mode: text_ids (B, T) long and text_mask (B, T) bool, the chain-of-causation targets (E4);
    actions (B, chunk, action_dim) float32 and action_mask (B, chunk) bool, training targets; row (B,) long,
    the dataset rows (debugging only); z_t, z_future, z_other (B, D) float32: the world latents of the present
    window, of the true future (world loss, `oracle` memory) and of another episode (`shuffle` memory);
    world_frames: the world window before encoding, numpy (B, m, H, W, 3) uint8 or (B, m, D) float, which
    `to` leaves where it is (the world encoder moves it)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    act_end: int
    images: torch.Tensor
    state: torch.Tensor
    text_ids: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    action_mask: torch.Tensor | None = None
    row: torch.Tensor | None = None
    z_t: torch.Tensor | None = None
    z_future: torch.Tensor | None = None
    z_other: torch.Tensor | None = None
    world_frames: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name, rank in _RANKS.items():
            value = getattr(self, name)
            if value is None:
                if name in ("input_ids", "attention_mask", "mm_token_type_ids", "images", "state"):
                    raise ValueError(f"Batch.{name} is required, got None.")
                continue
            if not torch.is_tensor(value):
                raise TypeError(f"Batch.{name} must be a tensor, got {type(value).__name__}.")
            if value.ndim != rank:
                raise ValueError(f"Batch.{name} must have {rank} dimensions, got shape {tuple(value.shape)}.")
        b, length = self.input_ids.shape
        for name in _RANKS:
            value = getattr(self, name)
            if value is not None and value.shape[0] != b:
                raise ValueError(f"Batch.{name} has shape {tuple(value.shape)}; expected {b} rows (input_ids' B).")
        for name in ("attention_mask", "mm_token_type_ids"):
            if getattr(self, name).shape != self.input_ids.shape:
                raise ValueError(
                    f"Batch.{name} has shape {tuple(getattr(self, name).shape)}; expected "
                    f"{tuple(self.input_ids.shape)}, that of input_ids."
                )
        end = int(self.act_end)
        object.__setattr__(self, "act_end", end)  # a 0-d tensor is accepted, an int kept
        if (self.text_ids is None) != (self.text_mask is None):
            raise ValueError("Batch.text_ids and Batch.text_mask come together; one of them is None.")
        t = 0 if self.text_ids is None else self.text_ids.shape[1]
        if self.text_ids is not None and self.text_mask.shape != self.text_ids.shape:
            raise ValueError(
                f"Batch.text_mask has shape {tuple(self.text_mask.shape)}; expected "
                f"{tuple(self.text_ids.shape)}, that of text_ids."
            )
        if not 0 < end <= length or end + t != length:
            raise ValueError(f"Batch.act_end is {end} with {t} text positions; expected act_end + T == L = {length}.")
        if self.attention_mask.device.type == "cpu":  # on an accelerator the check would wait for the device
            block = self.attention_mask[:, :end]
            if not bool(block[:, -1].all()) or not bool((block[:, 1:] >= block[:, :-1]).all()):
                raise ValueError(
                    "Batch.attention_mask is not left-padded: each row's prompt block must be "
                    "[0…0][1…1] ending at act_end."
                )
        if self.actions is not None and (self.action_mask is None or self.action_mask.shape != self.actions.shape[:2]):
            shape = None if self.action_mask is None else tuple(self.action_mask.shape)
            raise ValueError(f"Batch.action_mask has shape {shape}; expected {tuple(self.actions.shape[:2])}.")

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def replace(self, **changes: Any) -> Batch:
        """A copy with `changes` (`dataclasses.replace`); the batch itself never changes."""
        return dataclasses.replace(self, **changes)

    def _map(self, fn) -> Batch:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if torch.is_tensor(getattr(self, f.name))
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Every tensor field on `device`; `act_end` and numpy `world_frames` unchanged."""
        return self._map(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) worker batches."""
        return self._map(lambda v: v.pin_memory())
