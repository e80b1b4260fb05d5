"""The on-disk frame cache behind LeRobotDataset.images: built once by streaming decode, reused,
keyed, atomic, and byte-equal to a direct decode + resize."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import world_modality.data.lerobot_video as lerobot_video
from world_modality.data import frame_cache
from world_modality.data.fixture import make_fixture_dataset
from world_modality.data.lerobot import load_dataset
from world_modality.data.lerobot_tables import episode_meta
from world_modality.data.public_fixture import CAMERAS, make_public_fixture
from world_modality.data.video import decode_video_with_times
from world_modality.images import resize_frames

KEY, WRIST = CAMERAS


@pytest.fixture(scope="module")
def public_root(tmp_path_factory):
    # Two video files per camera, AV1 with a keyframe every 2 frames, as the public data is stored.
    return make_public_fixture(
        tmp_path_factory.mktemp("public") / "libero", n_episodes=4, length=12, n_files=2, image_size=64, seed=0
    )


def counting_decoder(monkeypatch):
    """Replace the reader's video decoder with one that counts files opened and frames yielded."""
    calls = {"files": 0, "frames": 0}
    real = lerobot_video.iter_video_frames

    def decoder(path, *args, **kwargs):
        calls["files"] += 1
        for t, frame in real(path, *args, **kwargs):
            calls["frames"] += 1
            yield t, frame

    monkeypatch.setattr(lerobot_video, "iter_video_frames", decoder)
    return calls


def cache_files(root):
    return sorted(p.name for p in (root / ".cache" / "frames").glob("*.npy"))


def reference_video_frames(ds, key, size):
    """Whole-file decode and nearest-time matching, as the reader did before it streamed."""
    metas = episode_meta(ds.root)
    out = []
    for ep in ds.episodes:
        m = metas[ep.index]
        path = ds.root / ds.info["video_path"].format(
            video_key=key, chunk_index=m[f"videos/{key}/chunk_index"], file_index=m[f"videos/{key}/file_index"]
        )
        frames, times = decode_video_with_times(path)
        query = m[f"videos/{key}/from_timestamp"] + ds.timestamp[ep.start : ep.end]
        pos = np.clip(np.searchsorted(times, query), 1, len(times) - 1)
        left, right = pos - 1, pos
        nearest = np.where(np.abs(times[left] - query) <= np.abs(times[right] - query), left, right)
        out.append(resize_frames(frames[nearest], size))
    return np.concatenate(out)


def test_built_once_then_reused_without_decoding(public_root, monkeypatch):
    calls = counting_decoder(monkeypatch)
    ds = load_dataset(public_root)
    first = ds.images(KEY, 32)
    assert isinstance(first, np.memmap) and first.shape == (len(ds), 32, 32, 3) and first.dtype == np.uint8
    assert not first.flags.writeable
    assert calls["files"] == 2  # each of the camera's two files decoded once
    assert ds.images(KEY, 32) is first  # memoised in the process
    again = load_dataset(public_root).images(KEY, 32)  # a new process would do the same: open, not decode
    assert calls["files"] == 2
    np.testing.assert_array_equal(again, first)
    assert cache_files(public_root) == [os.path.basename(again.filename)]


def test_bytes_equal_direct_decode_and_resize(public_root):
    ds = load_dataset(public_root)
    for size in (None, 32, 48):
        np.testing.assert_array_equal(ds.images(KEY, size), reference_video_frames(ds, KEY, size))
    np.testing.assert_array_equal(ds.images(WRIST, 32), reference_video_frames(ds, WRIST, 32))


def test_short_writes_are_completed(public_root, monkeypatch):
    real = os.pwrite
    monkeypatch.setattr(frame_cache.os, "pwrite", lambda fd, data, at: real(fd, bytes(data)[:1000], at))
    ds = load_dataset(public_root)
    np.testing.assert_array_equal(ds.images(KEY, 40), reference_video_frames(ds, KEY, 40))


def test_inline_images_equal_direct_decode_and_resize(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=6, image_size=32)
    # Shuffle the file's rows: the cache is in the reader's sorted row order, not the file's.
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    table = table.take(np.random.default_rng(0).permutation(table.num_rows))
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")
    ds = load_dataset(root)
    order = np.lexsort((table.column("frame_index").to_numpy(), table.column("episode_index").to_numpy()))
    pngs = table.column(KEY).to_pylist()
    direct = np.stack([np.asarray(Image.open(io.BytesIO(pngs[i]["bytes"])).convert("RGB")) for i in order])
    np.testing.assert_array_equal(ds.images(KEY), direct)
    np.testing.assert_array_equal(ds.images(KEY, 24), resize_frames(direct, 24))


def test_each_key_and_size_has_its_own_file(public_root):
    ds = load_dataset(public_root)
    names = {os.path.basename(ds.images(k, s).filename) for k, s in [(KEY, 16), (KEY, 24), (WRIST, 16)]}
    assert len(names) == 3
    assert {n.split("-")[0] for n in names} == {"image", "wrist_image"}


def test_failed_build_leaves_nothing_that_is_reused(tmp_path, monkeypatch):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=6, image_size=32, use_videos=True)
    real = lerobot_video.iter_video_frames

    def dies_half_way(path, *args, **kwargs):
        for i, item in enumerate(real(path, *args, **kwargs)):
            if i == 9:
                raise KeyboardInterrupt  # as Ctrl-C would, between two frames
            yield item

    monkeypatch.setattr(lerobot_video, "iter_video_frames", dies_half_way)
    monkeypatch.setattr(frame_cache, "RESIZE_BATCH", 4)  # some frames are already on disk when it dies
    with pytest.raises(KeyboardInterrupt):
        load_dataset(root).images(KEY, 16)
    folder = root / ".cache" / "frames"
    assert not list(folder.glob("*.npy")) and not list(folder.glob("*.tmp"))
    monkeypatch.setattr(lerobot_video, "iter_video_frames", real)
    ds = load_dataset(root)
    np.testing.assert_array_equal(ds.images(KEY, 16), reference_video_frames(ds, KEY, 16))


def test_killed_build_is_not_reused_and_its_temporary_file_is_removed(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=6, image_size=32, use_videos=True)
    # A child process builds the cache with a decoder that stalls half-way; it is killed there.
    child = textwrap.dedent(f"""
        import sys, time
        import world_modality.data.lerobot as lerobot
        import world_modality.data.lerobot_video as lerobot_video
        from world_modality.data import frame_cache
        frame_cache.RESIZE_BATCH = 2
        real = lerobot_video.iter_video_frames
        def stalls(path, *a, **k):
            for i, item in enumerate(real(path, *a, **k)):
                if i == 8:
                    print("stalled", flush=True)
                    time.sleep(60)
                yield item
        lerobot_video.iter_video_frames = stalls
        lerobot.load_dataset({str(root)!r}, progress=False).images({KEY!r})
    """)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        assert proc.stdout.readline().strip() == "stalled"
        folder = root / ".cache" / "frames"
        assert list(folder.glob("*.tmp")) and not list(folder.glob("*.npy"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(folder.glob("*.tmp"))  # what a killed builder leaves
    ds = load_dataset(root)
    np.testing.assert_array_equal(ds.images(KEY), reference_video_frames(ds, KEY, None))
    assert not list(folder.glob("*.tmp")) and len(list(folder.glob("*.npy"))) == 1


def test_decode_streams_one_frame_at_a_time(tmp_path, monkeypatch):
    """A decoder that makes each frame only when asked: the build holds a few frames, never a file or a camera."""
    n_eps, length, side = 20, 50, 64
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=n_eps, length=length, image_size=32, use_videos=True)
    ds = load_dataset(root, progress=False)
    produced, live = [], []

    def one_by_one(path, *args, **kwargs):
        for k in range(n_eps * length):  # one file holds every episode, one frame per row at 10 fps
            produced.append(k)
            live.append(len(produced) - written[0])
            yield k / 10, np.full((side, side, 3), k % 251, np.uint8)

    written = [0]
    real_write = frame_cache._NpyWriter.write

    def write(self, row, frame):
        written[0] += 1
        real_write(self, row, frame)

    monkeypatch.setattr(lerobot_video, "iter_video_frames", one_by_one)
    monkeypatch.setattr(frame_cache._NpyWriter, "write", write)
    tracemalloc.start()
    try:
        frames = ds.images(KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    camera = n_eps * length * side * side * 3
    assert frames.shape == (n_eps * length, side, side, 3)
    np.testing.assert_array_equal(frames[:, 0, 0, 0], np.arange(n_eps * length) % 251)
    # Frames wait only for their resize batch (and one for its nearer neighbour) before being written.
    assert max(live) <= frame_cache.RESIZE_BATCH + 2, max(live)
    assert peak < camera / 10, (peak, camera)


def test_read_only_dataset_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, image_size=16)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    os.chmod(root, 0o555)
    try:
        frames = load_dataset(root).images(KEY)
    finally:
        os.chmod(root, 0o755)
    assert str(frames.filename).startswith(str(tmp_path / "user" / "world_modality" / "frames"))
    assert not (root / ".cache").exists()


def test_user_cache_is_used_when_the_dataset_folder_is_not_writable(tmp_path, monkeypatch):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, image_size=16)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    (root / ".cache").write_text("a file where the cache folder would go")  # mkdir fails, as read-only would
    frames = load_dataset(root).images(KEY)
    assert str(frames.filename).startswith(str(tmp_path / "user" / "world_modality" / "frames"))
    # Found there again by the next reader.
    assert load_dataset(root).images(KEY).filename == frames.filename


def test_a_cache_of_the_wrong_shape_is_an_error_naming_it(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, image_size=16)
    path = load_dataset(root).images(KEY, 8).filename
    np.save(path, np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(frame_cache.FrameCacheError, match="delete the file"):
        load_dataset(root).images(KEY, 8)


def test_a_truncated_cache_is_named_and_rebuilt_once_deleted(tmp_path):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, image_size=16)
    frames = np.array(load_dataset(root).images(KEY, 8))
    path = Path(load_dataset(root).images(KEY, 8).filename)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(
        frame_cache.FrameCacheError,
        match=rf"frame cache {path} is unreadable \(truncated or "
        r"corrupt: .*\); delete the file to rebuild it",
    ):
        load_dataset(root).images(KEY, 8)
    path.unlink()
    np.testing.assert_array_equal(load_dataset(root).images(KEY, 8), frames)


def test_resize_is_the_shared_uint8_op():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 5, 40, 48, 3), dtype=np.uint8)
    out = resize_frames(img, 16)
    assert out.shape == (2, 5, 16, 16, 3) and out.dtype == np.uint8
    assert resize_frames(img, None) is img and resize_frames(out, 16) is out
    import torch

    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img.reshape(-1, 40, 48, 3)).permute(0, 3, 1, 2).float(),
        size=(16, 16),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    ref = ref.permute(0, 2, 3, 1).reshape(out.shape).numpy()
    assert np.abs(out - ref).max() <= 0.5 + 1e-3  # rounding, nothing else
    with pytest.raises(ValueError, match="uint8"):
        resize_frames(img.astype(np.float32), 16)
    with pytest.raises(ValueError, match="positive"):
        resize_frames(img, 0)


def test_a_full_disk_is_named_before_decoding_starts(tmp_path, monkeypatch):
    root = make_fixture_dataset(tmp_path / "ds", n_episodes=2, length=4, image_size=16)

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(frame_cache.FrameCacheError, match=r"cannot reserve .* GiB for the frame cache .*No space"):
        load_dataset(root).images(KEY)
    assert not list((root / ".cache" / "frames").glob("*.npy")) and not list((root / ".cache" / "frames").glob("*.tmp"))
