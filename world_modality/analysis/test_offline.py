"""Offline memory controls. `shuffle`: every sample's memory is the true future of a frame of another
episode, of another task where the dataset has one, never a neighbour's (almost its own). `present`:
the sample's own z_t."""

import numpy as np
import pytest
import torch

from world_modality.data.fixture import make_fixture_dataset
from world_modality.data.lerobot import load_dataset
from world_modality.pipeline import shuffle_memory_rows


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A tiny E2 on 6 episodes of 2 tasks: 2 held-out episodes (one per task), 4 training ones."""
    from conftest import tiny_config
    from world_modality.train import train

    root = tmp_path_factory.mktemp("offline")
    data = make_fixture_dataset(root / "data", n_episodes=6, length=12, image_size=32, n_tasks=2, seed=3)
    cfg = tiny_config(data, root / "run", max_epochs=1)
    return cfg, train(cfg, progress=False)


def shuffled_memories(monkeypatch, ckpt, split, seed):
    """Run eval-offline's `shuffle` and return, per evaluated sample, its row and the memory its action path read."""
    from world_modality.analysis.offline import evaluate_offline
    from world_modality.policy.model import WorldModalityPolicy

    seen = []
    real = WorldModalityPolicy.memory_latent

    def spy(self, mode, z_pred, batch, generator=None):
        z = real(self, mode, z_pred, batch, generator)
        if mode == "shuffle":
            seen.append((batch.row.cpu().numpy(), z.detach().cpu().numpy()))
        return z

    with monkeypatch.context() as m:
        m.setattr(WorldModalityPolicy, "memory_latent", spy)
        evaluate_offline(ckpt, modes=("shuffle",), split=split, seed=seed, batch_size=8, device="cpu")
    return np.concatenate([r for r, _ in seen]), np.concatenate([z for _, z in seen])


@pytest.mark.parametrize("split", ["val", "train"])
def test_offline_shuffle_memory_comes_from_another_episode_and_task(small_run, split, monkeypatch):
    from world_modality.pipeline import prepare_data
    from world_modality.policy.checkpoint import load_checkpoint

    cfg, ckpt = small_run
    data = prepare_data(cfg, load_checkpoint(ckpt).world_encoder, progress=False)
    ds = data.dataset
    futures = data.latents.latents[data.future_rows]  # the memory each row could hand out
    rows, memories = shuffled_memories(monkeypatch, ckpt, split, seed=0)
    assert len(rows) == len(data.val_rows if split == "val" else data.train_rows)
    for r, z in zip(rows, memories):
        sources = np.flatnonzero((futures == z).all(axis=1))
        assert sources.size, f"row {r}: its memory is no frame's true future"
        own_episode = ds.episode_ids[sources] == ds.episode_ids[r]
        assert not own_episode.any(), f"row {r} got the memory of rows {sources[own_episode]} of its own episode"
        assert all(ds.instructions[s] != ds.instructions[r] for s in sources), f"row {r}: memory of its own task"
    # Seeded: the same seed gives the same memories, another seed others.
    again = shuffled_memories(monkeypatch, ckpt, split, seed=0)
    other = shuffled_memories(monkeypatch, ckpt, split, seed=1)
    assert np.array_equal(again[1], memories) and not np.array_equal(other[1], memories)


def test_shuffle_rows_prefer_another_task_and_never_the_own_episode(tmp_path):
    ds = load_dataset(make_fixture_dataset(tmp_path / "two", n_episodes=6, length=5, n_tasks=2, seed=0))
    rows = np.arange(len(ds))
    picked = shuffle_memory_rows(ds, rows, rows, seed=0)
    assert all(ds.instructions[p] != ds.instructions[r] for r, p in zip(rows, picked))
    assert np.array_equal(picked, shuffle_memory_rows(ds, rows, rows, seed=0))
    # A pool of one task: the other task's rows fall back to other episodes of their own task.
    pool = ds.rows_of([e.index for e in ds.episodes if e.task == ds.episodes[0].task])
    picked = shuffle_memory_rows(ds, rows, pool, seed=0)
    assert np.isin(picked, pool).all() and not (ds.episode_ids[picked] == ds.episode_ids[rows]).any()


def test_shuffle_rows_of_a_one_task_dataset_come_from_other_episodes(tmp_path):
    ds = load_dataset(make_fixture_dataset(tmp_path / "one", n_episodes=3, length=20, n_tasks=1, seed=0))
    rows = np.arange(len(ds))
    picked = shuffle_memory_rows(ds, rows, rows, seed=0)
    assert not (ds.episode_ids[picked] == ds.episode_ids[rows]).any()
    assert len(set(ds.episode_ids[picked[ds.episode_ids[rows] == ds.episodes[0].index]])) == 2  # both other episodes
    with pytest.raises(ValueError, match="another episode"):
        shuffle_memory_rows(ds, rows, ds.rows_of([ds.episodes[0].index]), seed=0)


def test_offline_evaluation_reports_present_beside_predicted(small_run, monkeypatch):
    """eval-offline's default modes give an E2 checkpoint a `present` row (z_t in place of the prediction), in
    MEMORY_MODES order, and its memory is each sample's own z_t."""
    from world_modality.analysis.offline import evaluate_offline, format_table
    from world_modality.config import MEMORY_MODES
    from world_modality.policy.model import WorldModalityPolicy

    _, ckpt = small_run
    seen = []
    real = WorldModalityPolicy.memory_latent

    def spy(self, mode, z_pred, batch, generator=None):
        z = real(self, mode, z_pred, batch, generator)
        if mode == "present":
            seen.append(bool(torch.equal(z, batch.z_t)))
        return z

    with monkeypatch.context() as m:
        m.setattr(WorldModalityPolicy, "memory_latent", spy)
        result = evaluate_offline(ckpt, batch_size=8, device="cpu")
    assert list(result["action_mse"]) == list(MEMORY_MODES) and seen and all(seen)
    assert np.isfinite(result["action_mse"]["present"]) and np.isfinite(result["action_mse_raw"]["present"])
    assert "\npresent " in format_table(result)
