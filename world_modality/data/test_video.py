"""Round-trip tests for mp4 encoding and (range) decoding."""

import numpy as np
import pytest

from world_modality.data.video import decode_video, decode_video_with_times, encode_video, video_length


def smooth_clip(t=12, h=32, w=48):
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        r = 128 + 100 * np.sin((xx + 2 * i) / 9.0)
        g = 128 + 100 * np.cos((yy - i) / 7.0)
        b = np.full_like(r, 40 + 10 * i)
        frames.append(np.stack([r, g, b], -1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_round_trip_close(tmp_path):
    clip = smooth_clip()
    path = encode_video(clip, tmp_path / "a.mp4", fps=10)
    out = decode_video(path)
    assert out.shape == clip.shape and out.dtype == np.uint8
    err = np.abs(out.astype(float) - clip.astype(float)).mean()
    assert err < 6.0, err


def test_time_range_selects_frames(tmp_path):
    clip = smooth_clip(t=20)
    path = encode_video(clip, tmp_path / "a.mp4", fps=10)
    part, times = decode_video_with_times(path, 0.5, 1.2)
    assert len(part) == 7
    np.testing.assert_allclose(times, np.arange(5, 12) / 10)
    full = decode_video(path)
    np.testing.assert_array_equal(part, full[5:12])


def test_odd_size_rejected(tmp_path):
    with pytest.raises(ValueError, match="even"):
        encode_video(np.zeros((2, 31, 32, 3), np.uint8), tmp_path / "b.mp4")


def test_encoding_is_byte_identical_across_runs(tmp_path):
    # A regenerated dataset must keep its fingerprint, or every latent cache is rebuilt.
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (30, 48, 48, 3), dtype=np.uint8)
    a = encode_video(frames, tmp_path / "a.mp4").read_bytes()
    b = encode_video(frames, tmp_path / "b.mp4").read_bytes()
    assert a == b


def test_video_length_is_read_from_the_header(tmp_path):
    """The reader checks every episode span against it before decoding anything."""
    path = encode_video(smooth_clip(t=12), tmp_path / "a.mp4", fps=10)
    frames, seconds, size = video_length(path)
    assert frames == 12 and seconds == pytest.approx(1.2) and size == (32, 48)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match=r"junk.mp4 is not a readable video"):
        video_length(tmp_path / "junk.mp4")
