"""Write->read round trips and the load-time checks of the LeRobot v3 reader."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from world_modality.data.fixture import make_fixture_dataset
from world_modality.data.lerobot import DatasetError, load_dataset
from world_modality.data.writer import LeRobotWriter

KEYS = ("observation.images.image", "observation.images.wrist_image")
DATA = "data/chunk-000/file-000.parquet"


def smooth_frames(rng, t, size):
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 6, 3)
    frames = [np.stack([128 + 90 * np.sin(3 * xx + phase[c] + 0.2 * i + yy) for c in range(3)], -1) for i in range(t)]
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_random(root, use_videos, lengths=(5, 9, 3), tasks=("pick the bowl", "open the drawer", "pick the bowl")):
    rng = np.random.default_rng(1)
    w = LeRobotWriter(root, image_size=16, use_videos=use_videos)
    eps = []
    for T, task in zip(lengths, tasks):
        ep = dict(
            images={k: smooth_frames(rng, T, 16) for k in KEYS},
            state=rng.normal(size=(T, 8)).astype(np.float32),
            action=rng.normal(size=(T, 7)).astype(np.float32),
            task=task,
        )
        assert w.add_episode(**ep) == len(eps)
        eps.append(ep)
    w.finalize()
    return eps


@pytest.mark.parametrize("use_videos", [False, True])
def test_round_trip(tmp_path, use_videos):
    eps = write_random(tmp_path / "ds", use_videos)
    ds = load_dataset(tmp_path / "ds")
    assert ds.fps == 10 and ds.image_keys == list(KEYS)
    assert [e.length for e in ds.episodes] == [5, 9, 3]
    assert [e.task for e in ds.episodes] == [e["task"] for e in eps]
    np.testing.assert_array_equal(ds.state, np.concatenate([e["state"] for e in eps]))
    np.testing.assert_array_equal(ds.action, np.concatenate([e["action"] for e in eps]))
    assert ds.instructions == sum(([e["task"]] * len(e["state"]) for e in eps), [])
    np.testing.assert_array_equal(ds.frame_index, np.concatenate([np.arange(len(e["state"])) for e in eps]))
    for key in KEYS:
        got = ds.images(key).astype(float)
        want = np.concatenate([e["images"][key] for e in eps]).astype(float)
        assert got.shape == want.shape
        assert np.abs(got - want).mean() < (6.0 if use_videos else 1e-9)
        assert ds.images(key) is ds.images(key)  # memoised
    assert ds.images(KEYS[0], size=8).shape == (17, 8, 8, 3)
    np.testing.assert_array_equal(ds.rows_of([2, 0]), np.r_[0:5, 14:17])
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"]
    assert info["features"]["observation.state"]["names"] == names
    assert info["total_frames"] == 17 and info["total_tasks"] == 2


def rewrite(path, fn):
    pq.write_table(fn(pq.read_table(path)), path)


def set_column(table, name, values, type_=None):
    arr = pa.array(values, type=type_ or table.schema.field(name).type)
    return table.set_column(table.column_names.index(name), name, arr)


def test_rows_sorted_by_episode_and_frame(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=6)
    ref = load_dataset(root)
    ref_images = ref.images(KEYS[0])
    rewrite(root / DATA, lambda t: t.take(np.random.default_rng(0).permutation(t.num_rows)))
    ds = load_dataset(root)
    np.testing.assert_array_equal(ds.state, ref.state)
    np.testing.assert_array_equal(ds.images(KEYS[0]), ref_images)
    with pytest.raises(DatasetError, match="changed since"):
        ref.images(KEYS[1])
    assert [(e.start, e.end) for e in ds.episodes] == [(0, 6), (6, 12), (12, 18)]


def test_pandas_style_tasks_parquet(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4)
    t = pq.read_table(root / "meta/tasks.parquet")
    pq.write_table(
        pa.table({"task_index": t.column("task_index"), "__index_level_0__": t.column("task")}),
        root / "meta/tasks.parquet",
    )
    assert load_dataset(root).episodes[1].task == t.column("task")[1].as_py()


def test_instruction_key_error_names_task(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4)
    with pytest.raises(DatasetError, match="instruction") as e:
        load_dataset(root, instruction_key="instruction")
    assert "'task'" in str(e.value) and "'instruction'" in str(e.value)


def test_instruction_column_used(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, instruction_column="language_instruction")
    ds = load_dataset(root, instruction_key="language_instruction")
    assert ds.instructions == load_dataset(root).instructions
    with pytest.raises(DatasetError, match="not a string column"):
        load_dataset(root, instruction_key="observation.state")


def test_empty_instruction_error(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=4, length=5, n_tasks=2)
    rewrite(root / "meta/tasks.parquet", lambda t: set_column(t, "task", ["   ", t.column("task")[1].as_py()]))
    with pytest.raises(DatasetError, match=r"10 frames of 2 episodes") as e:
        load_dataset(root)
    assert "'task'" in str(e.value)


def test_missing_episode_key_error(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4)
    with pytest.raises(DatasetError, match="episode_id") as e:
        load_dataset(root, episode_id_key="episode_id")
    assert "episode_index" in str(e.value)  # names the columns that do exist
    with pytest.raises(DatasetError, match="observation.states.joint"):
        load_dataset(root, state_key="observation.states.joint")


def test_nan_action_error(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4)

    def poison(t):
        rows = t.column("action").to_pylist()
        rows[6][3] = float("nan")
        return set_column(t, "action", rows)

    rewrite(root / DATA, poison)
    with pytest.raises(DatasetError, match=r"'action'.*first bad row 6"):
        load_dataset(root)


def test_dim_mismatch_with_info(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [6]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"'action' has dimension 7.*\[6\]"):
        load_dataset(root)


def test_missing_root_and_info(tmp_path):
    with pytest.raises(DatasetError, match="nope"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="info.json"):
        load_dataset(tmp_path / "empty")


def test_fingerprint_stable_and_sensitive(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, use_videos=True)
    fp = load_dataset(root).fingerprint()
    assert len(fp) == 16 and fp == load_dataset(root).fingerprint()
    # Same content at another path hashes the same, videos included (their encoding is deterministic).
    a = make_fixture_dataset(tmp_path / "a", n_episodes=2, length=4)
    b = make_fixture_dataset(tmp_path / "b", n_episodes=2, length=4)
    assert load_dataset(a).fingerprint() == load_dataset(b).fingerprint() != fp
    c = make_fixture_dataset(tmp_path / "c", n_episodes=2, length=4, use_videos=True)
    assert load_dataset(c).fingerprint() == fp
    rewrite(
        root / DATA, lambda t: set_column(t, "action", [[x + 1e-3 for x in r] for r in t.column("action").to_pylist()])
    )
    fp2 = load_dataset(root).fingerprint()
    assert fp2 != fp
    video = root / "videos" / KEYS[0] / "chunk-000/file-000.mp4"
    data = bytearray(video.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    video.write_bytes(bytes(data))
    fp3 = load_dataset(root).fingerprint()
    assert fp3 != fp2
    with open(video, "ab") as f:
        f.write(b"\0")
    assert load_dataset(root).fingerprint() != fp3


EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def set_episode_field(root, episode, column, value):
    def edit(t):
        values = t.column(column).to_pylist()
        values[t.column("episode_index").to_pylist().index(episode)] = value
        return set_column(t, column, values)

    rewrite(root / EPISODES, edit)


def test_an_episode_span_past_the_end_of_its_video_is_named(tmp_path):
    """Three 6-frame episodes in one 18-frame video: episode 2's to_timestamp moved from 1.8 s to 2.4 s
    trained without a word."""
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=6, image_size=16, use_videos=True)
    video = root / "videos" / KEYS[0] / "chunk-000" / "file-000.mp4"
    set_episode_field(root, 2, f"videos/{KEYS[0]}/to_timestamp", 2.4)
    ds = load_dataset(root)
    with pytest.raises(
        DatasetError,
        match=rf"episode 2: .*{EPISODES} gives '{KEYS[0]}' the span \[1.200, 2.400\) "
        rf"s of {video}, 12.0 frames at 10 fps, but the data hold 6 rows",
    ):
        ds.images(KEYS[0])
    # A whole span moved past the end (from 1.2 to 1.8 s) is found from the file's header, before any decoding.
    set_episode_field(root, 2, f"videos/{KEYS[0]}/from_timestamp", 1.8)
    with pytest.raises(
        DatasetError,
        match=rf"episode 2: meta/episodes gives '{KEYS[0]}' the span \[1.800, 2.400\) s, "
        rf"past the end of its video file {video} \(18 frames, 1.800 s\)",
    ):
        load_dataset(root).images(KEYS[0])


def test_an_episode_length_that_disagrees_with_its_rows_is_named(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=6, image_size=16)
    set_episode_field(root, 1, "length", 9)
    with pytest.raises(
        DatasetError,
        match=rf"episode 1 has 6 rows in the data files but .*{EPISODES} gives it "
        r"length 9; expected them to agree",
    ):
        load_dataset(root)


def test_a_data_file_left_out_of_a_copy_is_named(tmp_path):
    """Episodes listed in meta/episodes without rows (their data file missing) trained on what was left."""
    from world_modality.data.public_fixture import make_public_fixture

    root = make_public_fixture(tmp_path / "p", n_episodes=3, length=4, n_files=2, image_size=32, seed=0)
    files = sorted((root / "data").rglob("*.parquet"))
    assert len(files) == 2
    files[1].unlink()
    with pytest.raises(
        DatasetError,
        match=rf"episodes \[2\] are listed in .* but have no rows in the data files "
        rf"under .*; expected the data file that holds episode 2 \({files[1]}\)",
    ):
        load_dataset(root)


@pytest.mark.parametrize("victim", [DATA, EPISODES, "meta/tasks.parquet"])
def test_a_truncated_parquet_file_is_named(tmp_path, victim):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, use_videos=True)
    data = (root / victim).read_bytes()
    (root / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=rf"{root / victim} is not a readable parquet file \(truncated or corrupt"):
        load_dataset(root).images(KEYS[0])


def test_info_json_that_is_not_json_is_named(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4)
    (root / "meta/info.json").write_text('{"codebase_version": "v3.0", ')
    with pytest.raises(
        DatasetError,
        match=rf"{root / 'meta/info.json'} is not valid JSON \(.*\); expected the "
        r"LeRobot v3 dataset description",
    ):
        load_dataset(root)
    (root / "meta/info.json").write_text('{"codebase_version": "v3.0", "fps": "ten", "features": {}}')
    with pytest.raises(DatasetError, match=r"info.json: fps is 'ten'; expected a positive whole number"):
        load_dataset(root)
    (root / "meta/info.json").write_text('{"codebase_version": "v3.0", "control_steps_per_frame": 2.5, "features": {}}')
    with pytest.raises(DatasetError, match=r"info.json: control_steps_per_frame is 2.5; expected a whole number >= 1"):
        load_dataset(root)


@pytest.mark.parametrize("use_videos", [False, True])
def test_frames_of_another_size_than_info_declares_are_named(tmp_path, use_videos):
    """A checkpoint records the declared size and closed-loop evaluation renders at it: frames of another size
    trained on other pixels than the policy would act on."""
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, image_size=16, use_videos=use_videos)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][KEYS[0]]["shape"] = [32, 32, 3]
    (root / "meta/info.json").write_text(json.dumps(info))
    where = r"videos/.*file-000\.mp4" if use_videos else r"data/chunk-000/file-000\.parquet"
    with pytest.raises(
        DatasetError,
        match=rf"{where} holds 16x16 frames of '{KEYS[0]}' but meta/info.json "
        r"features declare 32x32; expected them to agree",
    ):
        load_dataset(root).images(KEYS[0], 16)


def test_a_dataset_root_that_is_a_file_says_so(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetError, match=r"dataset root .*f is a file; expected a LeRobot v3 dataset directory"):
        load_dataset(tmp_path / "f")


def test_a_missing_task_table_is_named_not_called_a_missing_instruction_key(tmp_path):
    """Without meta/tasks.parquet the reader said instruction_key 'task' was not found, with no key holding an
    instruction, and pointed at task-agnostic training; the file is what is missing."""
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4)
    (root / "meta/tasks.parquet").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    message = str(e.value)
    assert message.startswith(f"missing {root / 'meta/tasks.parquet'}, the task table the data's task_index column")
    assert "its task_index and its instruction" in message and "meta/tasks.jsonl" in message
    assert "task-agnostic" not in message and "instruction_key" not in message
    # Another key asked for: still not found, and the missing table is named beside the keys there are.
    with pytest.raises(
        DatasetError, match=r"keys that hold instructions: \[\] \('task' would be: .*tasks.parquet, missing"
    ):
        load_dataset(root, instruction_key="instruction")
    # A dataset whose instructions are a data column needs no task table.
    root = make_fixture_dataset(tmp_path / "col", n_episodes=2, length=4, instruction_column="language_instruction")
    (root / "meta/tasks.parquet").unlink()
    assert len(load_dataset(root, instruction_key="language_instruction").episodes) == 2


def test_a_missing_episode_table_is_named_at_load(tmp_path):
    """Video features are read through meta/episodes: without it the dataset loaded, and failed only when a frame
    was first asked for, in a message that named no file."""
    import shutil

    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, image_size=16, use_videos=True)
    shutil.rmtree(root / "meta/episodes")
    with pytest.raises(DatasetError) as e:
        load_dataset(root)
    assert str(e.value).startswith(
        f"missing {root / 'meta/episodes'}/chunk-*/file-*.parquet, the episode table the video features "
        f"{list(KEYS)} are read through; expected one row per episode there"
    )
