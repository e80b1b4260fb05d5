"""Input validation and atomic install of the LeRobot v3 writer."""

import numpy as np
import pytest

from world_modality.data.lerobot import load_dataset
from world_modality.data.writer import LeRobotWriter

KEYS = ("observation.images.image", "observation.images.wrist_image")


def episode(T=4, size=8, state_dim=8, action_dim=7):
    return dict(
        images={k: np.zeros((T, size, size, 3), np.uint8) for k in KEYS},
        state=np.zeros((T, state_dim), np.float32),
        action=np.zeros((T, action_dim), np.float32),
        task="stack the cups",
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(task="  "), "task"),
        (dict(state=np.zeros((4, 7), np.float32)), r"state must be \(T,8\)"),
        (dict(action=np.zeros((3, 7), np.float32)), "same non-zero length"),
        (dict(images={KEYS[0]: np.zeros((4, 8, 8, 3), np.uint8)}), "image_keys"),
        (dict(images={k: np.zeros((4, 8, 8, 3), np.float32) for k in KEYS}), "uint8"),
        (dict(images={k: np.zeros((4, 6, 8, 3), np.uint8) for k in KEYS}), r"\(4, 8, 8, 3\)"),
        (dict(action=np.full((4, 7), np.nan, np.float32)), "NaN"),
    ],
)
def test_validation(tmp_path, change, match):
    w = LeRobotWriter(tmp_path / "ds", image_size=8, use_videos=False)
    with pytest.raises(ValueError, match=match):
        w.add_episode(**{**episode(), **change})
    w.abort()


def test_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with LeRobotWriter(tmp_path / "ds", image_size=8) as w:
            w.add_episode(**episode())
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_kept_until_overwrite(tmp_path):
    w = LeRobotWriter(tmp_path / "ds", image_size=8, use_videos=False)
    w.add_episode(**episode(T=3))
    w.finalize()
    with pytest.raises(FileExistsError):
        LeRobotWriter(tmp_path / "ds", image_size=8)
    w = LeRobotWriter(tmp_path / "ds", image_size=8, use_videos=False, overwrite=True)
    w.add_episode(**episode(T=5))
    assert load_dataset(tmp_path / "ds").episodes[0].length == 3  # old one intact while writing
    w.finalize()
    assert load_dataset(tmp_path / "ds").episodes[0].length == 5
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_custom_dims_and_names(tmp_path):
    w = LeRobotWriter(
        tmp_path / "ds", image_size=8, state_dim=3, action_dim=2, use_videos=False, action_names=["vx", "vy"]
    )
    w.add_episode(**episode(state_dim=3, action_dim=2))
    ds = load_dataset(w.finalize())
    assert ds.state.shape == (4, 3) and ds.action.shape == (4, 2)
    assert ds.info["features"]["action"]["names"] == ["vx", "vy"]
    assert ds.info["features"]["observation.state"]["names"] == ["s0", "s1", "s2"]


def test_empty_writer_refuses(tmp_path):
    w = LeRobotWriter(tmp_path / "ds", image_size=8)
    with pytest.raises(ValueError, match="no episodes"):
        w.finalize()
    assert not (tmp_path / "ds").exists()
