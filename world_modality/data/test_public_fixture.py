"""The public LIBERO schema (HuggingFaceVLA/libero, LeRobot v3) loads unchanged: metadata, rows,
instructions through task_index, AV1 videos across several files, windows, and a short E2 run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import tiny_config
from world_modality.data.lerobot import load_dataset
from world_modality.data.public_fixture import CAMERAS, LOW_DIM_FEATURES, make_public_fixture
from world_modality.data.windows import WindowSpec, action_chunk_rows, future_rows, past_frame_rows

N_EPISODES, LENGTH = 4, 20


@pytest.fixture(scope="module")
def public_root(tmp_path_factory):
    return make_public_fixture(
        tmp_path_factory.mktemp("public") / "libero", n_episodes=N_EPISODES, length=LENGTH, n_files=2, seed=0
    )


def test_layout_and_info_match_the_public_schema(public_root):
    files = sorted(p.relative_to(public_root).as_posix() for p in public_root.rglob("*") if p.is_file())
    assert files == sorted(
        [
            "meta/info.json",
            "meta/stats.json",
            "meta/tasks.parquet",
            "meta/episodes/chunk-000/file-000.parquet",
            "data/chunk-000/file-000.parquet",
            "data/chunk-000/file-001.parquet",
        ]
        + [f"videos/{k}/chunk-000/file-00{i}.mp4" for k in CAMERAS for i in (0, 1)]
    )
    info = json.loads((public_root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert {"chunks_size", "data_files_size_in_mb", "video_files_size_in_mb"} <= set(info)
    assert "control_steps_per_frame" not in info  # public conversions: one row per control step
    feats = info["features"]
    expected_shapes = {
        "observation.images.image": [256, 256, 3],
        "observation.images.wrist_image": [256, 256, 3],
        "observation.state": [8],
        "observation.states.ee_state": [6],
        "observation.states.joint_state": [7],
        "observation.states.gripper_state": [2],
        "action": [7],
        "timestamp": [1],
        "frame_index": [1],
        "episode_index": [1],
        "index": [1],
        "task_index": [1],
    }
    assert {k: f["shape"] for k, f in feats.items()} == expected_shapes
    assert all(feats[k]["dtype"] == "video" and feats[k]["names"] == ["height", "width", "rgb"] for k in CAMERAS)
    assert feats["observation.state"]["names"] == {
        "motors": ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"]
    }
    assert feats["observation.images.image"]["info"]["video.fps"] == 10
    # Data files hold no image or task string columns: the instruction is only reachable via task_index.
    schema = pq.read_schema(public_root / "data" / "chunk-000" / "file-000.parquet")
    assert schema.names == [*LOW_DIM_FEATURES, "timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert pa.types.is_fixed_size_list(schema.field("observation.state").type)
    tasks = pq.read_table(public_root / "meta" / "tasks.parquet")
    assert tasks.column_names == ["task_index", "__index_level_0__"]
    ep_cols = pq.read_schema(public_root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").names
    for col in (
        "episode_index",
        "tasks",
        "length",
        "data/chunk_index",
        "data/file_index",
        "dataset_from_index",
        "dataset_to_index",
        "meta/episodes/chunk_index",
        "stats/action/mean",
        *(f"videos/{k}/{f}" for k in CAMERAS for f in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")),
    ):
        assert col in ep_cols, col


def test_loads_unchanged_with_instructions_and_state_columns(public_root):
    ds = load_dataset(public_root)
    assert len(ds) == N_EPISODES * LENGTH and ds.fps == 10
    assert ds.state.shape == (len(ds), 8) and ds.action.shape == (len(ds), 7)
    assert [(e.index, e.start, e.end) for e in ds.episodes] == [
        (i, i * LENGTH, (i + 1) * LENGTH) for i in range(N_EPISODES)
    ]
    assert [e.task for e in ds.episodes] == [
        "move the block to the top left corner",
        "move the block to the bottom right corner",
    ] * 2
    np.testing.assert_array_equal(ds.column("observation.states.ee_state"), ds.state[:, :6])
    np.testing.assert_array_equal(ds.column("observation.states.gripper_state"), ds.state[:, 6:])
    assert ds.column("observation.states.joint_state").shape == (len(ds), 7)
    assert set(np.unique(ds.action[:, 6])) <= {-1.0, 1.0}
    assert ds.image_keys == list(CAMERAS)


def test_video_rows_line_up_across_files(public_root):
    """Each row's decoded frame shows the block where that row's state puts it, in both files."""
    ds = load_dataset(public_root)
    for key, mirrored in zip(CAMERAS, (False, True)):
        frames = ds.images(key)
        assert frames.shape == (len(ds), 256, 256, 3) and frames.dtype == np.uint8
        block = (frames[..., 0] > 180) & (frames[..., 1] > 150) & (frames[..., 2] < 110)
        ys, xs = np.arange(256)[None, :, None], np.arange(256)[None, None, :]
        n = block.sum((1, 2))
        assert (n > 0).all()
        cx, cy = (block * xs).sum((1, 2)) / n, (block * ys).sum((1, 2)) / n
        x, y = ds.state[:, 0] * 255, ds.state[:, 1] * 255
        if mirrored:  # the wrist view is the scene flipped upside down
            y = 255 - y
        # Off by one row would move the block by up to 0.06 * 255 = 15 px on moving steps.
        assert np.abs(cx - x).max() < 4 and np.abs(cy - y).max() < 4
    small = ds.images("observation.images.image", 32)
    assert small.shape == (len(ds), 32, 32, 3)


def test_windows_stay_inside_episodes(public_root):
    ds = load_dataset(public_root)
    spec = WindowSpec(num_frames=4, frame_stride=2, future_offset=4, chunk_size=8)
    ep_of = ds.episode_ids
    past, fut = past_frame_rows(ds.episodes, spec), future_rows(ds.episodes, spec)
    chunks, mask = action_chunk_rows(ds.episodes, spec)
    rows = np.arange(len(ds))
    assert (ep_of[past] == ep_of[:, None]).all() and (ep_of[fut] == ep_of).all()
    assert (ep_of[chunks] == ep_of[:, None]).all()
    assert mask[LENGTH - 1].sum() == 1 and mask[0].all()
    assert (past[:, -1] == rows).all() and (past[LENGTH + 7] == LENGTH + np.array([1, 3, 5, 7])).all()


@pytest.mark.slow
def test_short_e2_training_runs_on_the_public_schema(public_root, tmp_path):
    from world_modality.policy.checkpoint import load_checkpoint
    from world_modality.train import train

    cfg = tiny_config(public_root, tmp_path / "run", max_epochs=2, frame_stride=2, future_offset=2)
    final = train(cfg, progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["action_loss"]) and np.isfinite(m["world_loss"]) for m in metrics)
    policy = load_checkpoint(final)
    # No control_steps_per_frame in the public info.json: each row is one control step.
    assert policy.data_info["control_steps_per_frame"] == 1 and policy.data_info["fps"] == 10
    assert policy.data_info["binary_gripper"] is True
    # The public cameras' 256 px, which closed-loop evaluation renders at before resizing to image_size.
    assert policy.data_info["frame_size"] == 256 and policy.cfg.data.image_size == 32


def _policies() -> dict[str, int]:
    """{thread id: scheduling policy} of this process's threads."""
    out = {}
    for f in Path("/proc/self/task").glob("*/sched"):
        try:
            lines = f.read_text().splitlines()
        except OSError:  # the thread ended while being read
            continue
        out.update({f.parent.name: int(line.split(":")[1]) for line in lines if line.startswith("policy")})
    return out


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads Linux /proc scheduling state")
def test_writing_av1_leaves_every_thread_and_later_process_at_normal_scheduling(tmp_path):
    # SVT-AV1 run as root switches its caller to SCHED_FIFO 99; simulator workers spawned later inherited it.
    before = os.sched_getscheduler(0)
    threads = _policies()  # threads an earlier test's library left behind keep whatever policy they had
    make_public_fixture(tmp_path / "p", n_episodes=1, length=4, n_files=1, image_size=32, seed=0)
    after = _policies()
    assert os.sched_getscheduler(0) == before
    assert {tid: p for tid, p in after.items() if threads.get(tid, before) != p} == {}
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert int(child.stdout) == before
