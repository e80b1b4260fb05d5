"""The synthetic fixture is deterministic and its actions really drive the square toward the task goal."""

import numpy as np

from world_modality.data.fixture import GOALS, make_fixture_dataset, render
from world_modality.data.lerobot import load_dataset


def test_deterministic(tmp_path):
    a = load_dataset(make_fixture_dataset(tmp_path / "a", seed=3))
    b = load_dataset(make_fixture_dataset(tmp_path / "b", seed=3))
    c = load_dataset(make_fixture_dataset(tmp_path / "c", seed=4))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    np.testing.assert_array_equal(a.images("observation.images.image"), b.images("observation.images.image"))


def test_actions_drive_state_and_depend_on_task(tmp_path):
    ds = load_dataset(make_fixture_dataset(tmp_path / "ds", n_episodes=6, length=24, n_tasks=3))
    assert len(set(ds.instructions)) == 3
    for ep in ds.episodes:
        s, a = ds.state[ep.start : ep.end], ds.action[ep.start : ep.end]
        np.testing.assert_allclose(s[1:, :2], np.clip(s[:-1, :2] + a[:-1, :2], 0, 1), atol=1e-6)
        goal = np.asarray(next(g for g, word in GOALS if ep.task.endswith(word)))
        assert np.linalg.norm(s[-1, :2] - goal) < 0.5 * np.linalg.norm(s[0, :2] - goal)
    # Same task -> same action direction; different tasks -> different directions.
    mean_dir = {
        t: np.sign(ds.action[[i for i, x in enumerate(ds.instructions) if x == t], :2].mean(0))
        for t in set(ds.instructions)
    }
    assert len({tuple(v) for v in mean_dir.values()}) == 3


def test_images_show_state(tmp_path):
    ds = load_dataset(make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=6, image_size=32))
    imgs = ds.images("observation.images.image")
    np.testing.assert_array_equal(imgs, render(ds.state[:, :2].astype(np.float64), 32))
    assert not np.array_equal(imgs[0], imgs[-1])


def test_videos_and_instruction_column(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=6, use_videos=True, instruction_column="instr")
    ds = load_dataset(root, instruction_key="instr")
    assert ds.info["features"]["observation.images.image"]["dtype"] == "video"
    ref = render(ds.state[:, :2].astype(np.float64), 32).astype(float)
    assert np.abs(ds.images("observation.images.image").astype(float) - ref).mean() < 6
