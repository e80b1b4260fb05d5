"""From a LeRobot dataset to model batches: held-out split, windows, cached latents, statistics.

Training and offline evaluation both build their samples here and turn them into tensors with the
policy's one `ObservationPreprocessor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .cache_dirs import default_dirs
from .config import ExperimentConfig
from .data.lerobot import LeRobotDataset, load_dataset
from .data.split import split_episodes
from .data.windows import WindowSpec, action_chunk_rows, future_rows, past_frame_rows
from .policy.types import Batch
from .world.env_state import env_state_latents, is_env_state_encoder
from .world.latent_cache import LatentCache, load_or_build_cache


def window_spec(cfg: ExperimentConfig) -> WindowSpec:
    return WindowSpec(
        num_frames=cfg.world.num_frames,
        frame_stride=cfg.world.frame_stride,
        future_offset=cfg.world.future_offset,
        chunk_size=cfg.policy.chunk_size,
    )


@dataclass
class PreparedData:
    dataset: LeRobotDataset
    train_rows: np.ndarray
    val_rows: np.ndarray
    chunk_rows: np.ndarray
    chunk_mask: np.ndarray
    future_rows: np.ndarray
    latents: LatentCache | None
    texts: list[str | None] | None = None  # chain-of-causation text per frame (E4)
    texts_missing: int = 0  # frames the annotation file has no text for
    # Side of the camera frames read from the dataset; evaluation resizes rendered frames to it (inference/runner.py).
    image_size: int | None = None

    def latent_stats(self) -> dict[str, np.ndarray]:
        """Latent mean/std and delta std over the training rows only."""
        z = self.latents.latents
        zt, zf = z[self.train_rows], z[self.future_rows[self.train_rows]]
        return {
            "latent_mean": zt.mean(0),
            "latent_std": np.maximum(zt.std(0), 1e-6),
            "delta_std": np.maximum((zf - zt).std(0), 1e-6),
        }

    def action_state_stats(self) -> dict[str, np.ndarray]:
        a, s = self.dataset.action[self.train_rows], self.dataset.state[self.train_rows]
        return {
            "action_mean": a.mean(0),
            "action_std": np.maximum(a.std(0), 1e-6),
            "state_mean": s.mean(0),
            "state_std": np.maximum(s.std(0), 1e-6),
        }


def _load_with_latents(cfg: ExperimentConfig, world_encoder, progress: bool):
    """(dataset, window spec, train/val episodes, latents or None): the dataset loaded and checked, and its
    world latents (cached) when the experiment uses the world."""
    d = cfg.data
    dataset = load_dataset(
        d.dataset,
        instruction_key=d.instruction_key,
        episode_id_key=d.episode_id_key,
        state_key=d.state_key,
        action_key=d.action_key,
    )
    dataset.progress = progress
    for key in d.image_keys + ((cfg.world.world_image_key,) if world_encoder is not None else ()):
        if key not in dataset.image_keys:
            raise ValueError(f"dataset {dataset.root} has no camera {key!r}; its cameras are {dataset.image_keys}.")
    spec = window_spec(cfg)
    train_eps, val_eps = split_episodes(dataset, d.val_fraction)
    latents = None
    if is_env_state_encoder(world_encoder):
        # The privileged state: same windows, computed in memory, training-row statistics (world/env_state.py).
        latents = env_state_latents(
            dataset,
            world_encoder,
            past_frame_rows(dataset.episodes, spec),
            dataset.rows_of(train_eps),
            spec.frame_stride,
        )
    elif world_encoder is not None:
        past = past_frame_rows(dataset.episodes, spec)
        latents = load_or_build_cache(
            [cfg.world.latent_cache_dir] if cfg.world.latent_cache_dir else default_dirs(dataset.root, "latents"),
            encoder=world_encoder,
            # Read at image_size, as closed-loop evaluation resizes the world camera before encoding
            # (inference/runner.py).
            frames_fn=lambda: dataset.images(cfg.world.world_image_key, d.image_size),
            frame_size=d.image_size,
            past_rows=past,
            frame_stride=spec.frame_stride,
            image_key=cfg.world.world_image_key,
            dataset_fingerprint=dataset.fingerprint(),
            progress=progress,
        )
    return dataset, spec, train_eps, val_eps, latents


def training_memories(cfg: ExperimentConfig, world_encoder, progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """True future latents of the training rows (rows, latent_dim) and each row's instruction: what the
    closed-loop `shuffle` memory draws from, without the rest of `prepare_data` (action chunks, annotations)."""
    dataset, spec, train_eps, _, latents = _load_with_latents(cfg, world_encoder, progress)
    rows = dataset.rows_of(train_eps)
    return latents.latents[future_rows(dataset.episodes, spec)[rows]], [dataset.instructions[r] for r in rows]


def prepare_data(cfg: ExperimentConfig, world_encoder=None, progress: bool = True) -> PreparedData:
    """Load and check the dataset; encode latents (cached) when the experiment uses the world."""
    d = cfg.data
    dataset, spec, train_eps, val_eps, latents = _load_with_latents(cfg, world_encoder, progress)
    chunk_rows, chunk_mask = action_chunk_rows(dataset.episodes, spec)
    texts, missing = None, 0
    if d.coc_jsonl:
        from .data.coc import join_annotations, read_annotations

        texts, missing = join_annotations(dataset, read_annotations(d.coc_jsonl))
        if missing == len(texts):
            raise ValueError(
                f"no frame of {dataset.root} has an annotation in {d.coc_jsonl}: check that its "
                f"episode_index/frame_index refer to this dataset."
            )
    return PreparedData(
        texts=texts,
        texts_missing=missing,
        dataset=dataset,
        train_rows=dataset.rows_of(train_eps),
        val_rows=dataset.rows_of(val_eps),
        chunk_rows=chunk_rows,
        chunk_mask=chunk_mask,
        future_rows=future_rows(dataset.episodes, spec),
        latents=latents,
        image_size=d.image_size,
    )


def shuffle_memory_rows(dataset: LeRobotDataset, rows: np.ndarray, pool: np.ndarray, seed: int) -> np.ndarray:
    """For each of `rows`, a row of `pool` drawn (seeded) from another episode, of another task
    wherever the pool holds one: the `shuffle` ablation gives a sample that row's memory.

    A neighbouring row of the same episode has almost the sample's own future, so the ablation
    would measure nothing; another task's memory is the one that is surely wrong for this sample.
    A dataset of one task falls back to other episodes of that task."""
    rows, pool = np.asarray(rows, dtype=np.int64), np.asarray(pool, dtype=np.int64)
    # Task of each row by episode (an episode's first instruction, as the split groups them), so
    # rows of another task are always rows of another episode.
    _, codes = np.unique([ep.task for ep in dataset.episodes], return_inverse=True)
    task_of_row = np.repeat(codes, [ep.length for ep in dataset.episodes])
    rng = np.random.default_rng(seed)
    out = np.empty(len(rows), dtype=np.int64)
    for task in np.unique(task_of_row[rows]):
        mine = np.flatnonzero(task_of_row[rows] == task)
        others = pool[task_of_row[pool] != task]
        if len(others):
            out[mine] = rng.choice(others, size=len(mine))
            continue
        for ep in np.unique(dataset.episode_ids[rows[mine]]):
            here = mine[dataset.episode_ids[rows[mine]] == ep]
            others = pool[dataset.episode_ids[pool] != ep]
            if not len(others):
                raise ValueError(
                    f"memory mode 'shuffle' needs rows of another episode than episode {ep} of "
                    f"{dataset.root}; the pool has none."
                )
            out[here] = rng.choice(others, size=len(here))
    return out


class FrameSamples(torch.utils.data.Dataset):
    """One sample per frame row: the observation dict (dataset schema) plus training targets.
    With `memory_rows` (one per row, see `shuffle_memory_rows`), each sample also carries
    `z_other`, the true future latent of that row: the `shuffle` ablation's memory."""

    def __init__(
        self, data: PreparedData, rows: np.ndarray, image_keys: tuple[str, ...], memory_rows: np.ndarray | None = None
    ):
        self.data, self.rows, self.image_keys = data, np.asarray(rows), image_keys
        if memory_rows is not None and len(memory_rows) != len(self.rows):
            raise ValueError(
                f"memory_rows has {len(memory_rows)} entries for {len(self.rows)} rows; expected one per row."
            )
        self.memory_rows = None if memory_rows is None else np.asarray(memory_rows)
        # Read at the policy's image size, so the preprocessor's resize is a no-op here and the
        # cache holds S×S frames, not the dataset's native ones (evaluation applies the same resize).
        self.images = {k: data.dataset.images(k, data.image_size) for k in image_keys}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        ds = self.data.dataset
        sample = {k: self.images[k][r] for k in self.image_keys}
        sample["observation.state"] = ds.state[r]
        sample["task"] = ds.instructions[r]
        sample["actions"] = ds.action[self.data.chunk_rows[r]]
        sample["action_mask"] = self.data.chunk_mask[r]
        sample["row"] = r
        if self.data.texts is not None:
            sample["coc_text"] = self.data.texts[r]
        if self.data.latents is not None:
            z = self.data.latents.latents
            sample["z_t"] = z[r]
            sample["z_future"] = z[self.data.future_rows[r]]
            if self.memory_rows is not None:
                sample["z_other"] = z[self.data.future_rows[self.memory_rows[i]]]
        return sample


def make_collate(preprocessor):
    """Observation fields through the shared preprocessor; targets stacked as tensors -> a `Batch`."""

    def stack(samples: list[dict[str, Any]], key: str) -> torch.Tensor:
        return torch.as_tensor(np.stack([s[key] for s in samples]), dtype=torch.float32)

    def collate(samples: list[dict[str, Any]]) -> Batch:
        targets = {
            "actions": stack(samples, "actions"),
            "action_mask": torch.as_tensor(np.stack([s["action_mask"] for s in samples])),
            "row": torch.as_tensor([s["row"] for s in samples]),
        }  # for debugging; the model ignores it
        if "z_t" in samples[0]:
            targets["z_t"], targets["z_future"] = stack(samples, "z_t"), stack(samples, "z_future")
        if "z_other" in samples[0]:
            targets["z_other"] = stack(samples, "z_other")
        return preprocessor(samples).replace(**targets)

    return collate


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: each image shifted by up to `pad` pixels (edge-replicated border),
    the random-shift augmentation of image-based behaviour cloning. (B, C, 3, H, W) -> same shape."""
    if pad <= 0:
        return images
    b, c, ch, h, w = images.shape
    flat = images.reshape(b * c, ch, h, w)
    padded = torch.nn.functional.pad(flat, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b * c,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b * c,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).clamp(max=h + 2 * pad - 1)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp(max=w + 2 * pad - 1)
    idx = torch.arange(b * c)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out.reshape(b, c, ch, h, w)
