"""Tests for latent encoding and the strict on-disk latent cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from world_modality.world.conftest import M, N
from world_modality.world.latent_cache import (
    LatentCacheError,
    LatentCacheMismatch,
    cache_key,
    encode_latents,
    load_cache,
    load_or_build_cache,
)


def _ident(enc, **over):
    d = dict(frame_stride=1, image_key="observation.images.image", dataset_fingerprint="fp-a")
    d.update(over)
    return d


def test_encode_latents_matches_encoder(enc, frames, past_rows):
    z = encode_latents(frames, past_rows, enc, batch_size=3, progress=False)
    assert z.shape == (N, enc.latent_dim) and z.dtype == np.float32
    expected = enc.encode(torch.from_numpy(frames[past_rows])).numpy()
    np.testing.assert_allclose(z, expected, atol=1e-5)
    # Row order follows past_rows, not frame order.
    z_rev = encode_latents(frames, past_rows[::-1], enc, batch_size=4, progress=False)
    np.testing.assert_allclose(z_rev, z[::-1], atol=1e-5)


def test_encode_latents_validates(enc, frames, past_rows):
    with pytest.raises(ValueError, match="m=2"):
        encode_latents(frames, np.zeros((N, 3), dtype=int), enc, progress=False)
    with pytest.raises(IndexError):
        encode_latents(frames, past_rows + N, enc, progress=False)


def test_cache_key_readable_and_distinct(enc):
    k = cache_key(enc.encoder_id, M, 1, "observation.images.image", "fp-a")
    assert k.startswith("tiny-vjepa2-m2-st1-image-")
    assert k == cache_key(enc.encoder_id, M, 1, "observation.images.image", "fp-a")
    others = {
        cache_key(enc.encoder_id, M, 2, "observation.images.image", "fp-a"),
        cache_key(enc.encoder_id, M, 1, "observation.images.wrist_image", "fp-a"),
        cache_key(enc.encoder_id, M, 1, "observation.images.image", "fp-b"),
        cache_key(enc.encoder_id + "x", M, 1, "observation.images.image", "fp-a"),
    }
    assert k not in others and len(others) == 4


def test_build_then_hit_round_trip(enc, frames, past_rows, tmp_path):
    calls = []

    def frames_fn():
        calls.append(1)
        return frames

    built = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=frames_fn, past_rows=past_rows, progress=False, **_ident(enc)
    )
    assert len(calls) == 1
    # + its lock
    assert sorted(p.suffix for p in tmp_path.iterdir() if not p.name.startswith(".")) == [".json", ".safetensors"]
    hit = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=frames_fn, past_rows=past_rows, progress=False, **_ident(enc)
    )
    assert len(calls) == 1, "frames_fn must not be called on a cache hit"
    np.testing.assert_array_equal(hit.latents, built.latents)
    np.testing.assert_allclose(hit.mean, built.latents.mean(0), atol=1e-5)
    np.testing.assert_allclose(hit.std, built.latents.std(0), atol=1e-5)
    assert hit.meta["encoder_id"] == enc.encoder_id
    assert hit.meta["n_frames"] == N and hit.meta["latent_dim"] == enc.latent_dim
    assert hit.meta["num_frames"] == M and "created" in hit.meta
    # A different fingerprint is a different key: a fresh build, not a reuse.
    load_or_build_cache(
        tmp_path,
        encoder=enc,
        frames_fn=frames_fn,
        past_rows=past_rows,
        progress=False,
        **_ident(enc, dataset_fingerprint="fp-b"),
    )
    assert len(calls) == 2


def test_an_unwritable_first_folder_falls_through_to_the_next(enc, frames, past_rows, tmp_path):
    blocked = tmp_path / "dataset" / ".cache"
    blocked.parent.mkdir()
    blocked.write_text("a file where the cache folder would go")  # mkdir fails, as on a read-only dataset
    dirs = [blocked / "latents", tmp_path / "user"]
    calls = []

    def frames_fn():
        calls.append(1)
        return frames

    built = load_or_build_cache(
        dirs, encoder=enc, frames_fn=frames_fn, past_rows=past_rows, progress=False, **_ident(enc)
    )
    assert built.path.startswith(str(tmp_path / "user")) and len(calls) == 1
    hit = load_or_build_cache(
        dirs, encoder=enc, frames_fn=frames_fn, past_rows=past_rows, progress=False, **_ident(enc)
    )
    assert hit.path == built.path and len(calls) == 1  # found there by the next reader, not rebuilt
    with pytest.raises(LatentCacheError, match=r"no writable folder for the latent cache .*latent_cache_dir"):
        load_or_build_cache(
            [blocked / "latents"], encoder=enc, frames_fn=frames_fn, past_rows=past_rows, progress=False, **_ident(enc)
        )


def test_std_is_floored(enc, past_rows, tmp_path):
    constant = np.full((N, 36, 36, 3), 7, dtype=np.uint8)
    c = load_or_build_cache(
        tmp_path,
        encoder=enc,
        frames_fn=lambda: constant,
        past_rows=past_rows,
        progress=False,
        **_ident(enc),
    )
    assert np.all(c.std > 0)
    assert np.all(np.isfinite((c.latents - c.mean) / c.std))


@pytest.mark.parametrize(
    "field,override",
    [
        ("encoder_id", {"encoder_id": "tiny-vjepa2-m2-s32-000000000000"}),
        ("num_frames", {"num_frames": 4}),
        ("frame_stride", {"frame_stride": 3}),
        ("image_key", {"image_key": "observation.images.wrist_image"}),
        ("dataset_fingerprint", {"dataset_fingerprint": "fp-other"}),
    ],
)
def test_load_cache_mismatch_names_field(enc, frames, past_rows, tmp_path, field, override):
    c = load_or_build_cache(
        tmp_path,
        encoder=enc,
        frames_fn=lambda: frames,
        past_rows=past_rows,
        progress=False,
        **_ident(enc),
    )
    expected = dict(encoder_id=enc.encoder_id, num_frames=M, **_ident(enc))
    load_cache(c.path, **expected)  # the matching identity loads
    bad = {**expected, **override}
    with pytest.raises(LatentCacheMismatch) as e:
        load_cache(c.path + ".safetensors", **bad)
    msg = str(e.value)
    assert e.value.field == field
    assert field in msg and repr(expected[field]) in msg and repr(bad[field]) in msg


def test_tampered_meta_is_caught_on_hit(enc, frames, past_rows, tmp_path):
    c = load_or_build_cache(
        tmp_path,
        encoder=enc,
        frames_fn=lambda: frames,
        past_rows=past_rows,
        progress=False,
        **_ident(enc),
    )
    meta_path = c.path + ".json"
    meta = json.loads(open(meta_path).read())
    meta["dataset_fingerprint"] = "someone-else"
    open(meta_path, "w").write(json.dumps(meta))
    with pytest.raises(LatentCacheMismatch, match="dataset_fingerprint"):
        load_or_build_cache(
            tmp_path,
            encoder=enc,
            frames_fn=lambda: frames,
            past_rows=past_rows,
            progress=False,
            **_ident(enc),
        )


def test_truncated_cache_file_is_named(enc, frames, past_rows, tmp_path):
    c = load_or_build_cache(
        tmp_path,
        encoder=enc,
        frames_fn=lambda: frames,
        past_rows=past_rows,
        progress=False,
        **_ident(enc),
    )
    st = c.path + ".safetensors"
    data = open(st, "rb").read()
    open(st, "wb").write(data[: len(data) // 2])
    with pytest.raises(LatentCacheError, match="unreadable.*delete it"):
        load_or_build_cache(
            tmp_path,
            encoder=enc,
            frames_fn=lambda: frames,
            past_rows=past_rows,
            progress=False,
            **_ident(enc),
        )


def test_changed_windows_are_caught(enc, frames, past_rows, tmp_path):
    """Other windows over the same frames (another episode key over one dataset) are never served from the
    first cache: they get a cache of their own beside it, and neither is deleted for the other (the old
    error advised deleting a cache that was valid for the first configuration)."""
    first = load_or_build_cache(
        tmp_path,
        encoder=enc,
        frames_fn=lambda: frames,
        past_rows=past_rows,
        progress=False,
        **_ident(enc),
    )
    other_rows = past_rows[:, ::-1].copy()
    other = load_or_build_cache(
        tmp_path,
        encoder=enc,
        frames_fn=lambda: frames,
        past_rows=other_rows,
        progress=False,
        **_ident(enc),
    )
    assert other.path != first.path and other.path.startswith(first.path + "-w")
    np.testing.assert_allclose(other.latents, encode_latents(frames, other_rows, enc, progress=False), atol=1e-6)
    for rows, cache in ((past_rows, first), (other_rows, other)):  # both are found again, neither rebuilt
        again = load_or_build_cache(
            tmp_path, encoder=enc, frames_fn=lambda: 1 / 0, past_rows=rows, progress=False, **_ident(enc)
        )
        assert again.path == cache.path and np.array_equal(again.latents, cache.latents)
    with pytest.raises(LatentCacheMismatch, match="past_rows_sha"):  # loaded directly, they are told apart
        load_cache(
            first.path,
            encoder_id=enc.encoder_id,
            num_frames=M,
            past_rows_sha=other.meta["past_rows_sha"],
            **_ident(enc),
        )


def test_windows_of_another_m_than_the_encoder_are_refused_before_a_cache_is_judged(enc, frames, past_rows, tmp_path):
    """An m2 config with an m4 encoder (an edited checkpoint) met the encoder's valid cache, called it a
    mismatch and advised deleting it; the next run then failed differently. The windows are the error."""
    c = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=lambda: frames, past_rows=past_rows, progress=False, **_ident(enc)
    )
    with pytest.raises(
        ValueError,
        match=r"windows of shape \(10, 3\) for the world encoder .* which takes m=2 "
        r"frames: the config's latent_suffix and its world encoder disagree",
    ):
        load_or_build_cache(
            tmp_path,
            encoder=enc,
            frames_fn=lambda: frames,
            past_rows=np.zeros((N, 3), dtype=int),
            progress=False,
            **_ident(enc),
        )
    assert Path(c.path + ".json").exists() and Path(c.path + ".safetensors").exists()


def test_a_cache_whose_record_disagrees_with_its_name_is_the_one_to_delete(enc, frames, past_rows, tmp_path):
    """The advice in the error is right: deleting the two files it names lets the next run rebuild the cache."""
    c = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=lambda: frames, past_rows=past_rows, progress=False, **_ident(enc)
    )
    meta_path = Path(c.path + ".json")
    meta = json.loads(meta_path.read_text())
    meta["frame_stride"] = 7
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        LatentCacheMismatch,
        match=r"frame_stride is 7 in the cache but 1 was expected; it is never "
        r"reused: its file name is derived from these fields",
    ) as e:
        load_or_build_cache(
            tmp_path, encoder=enc, frames_fn=lambda: frames, past_rows=past_rows, progress=False, **_ident(enc)
        )
    assert f"delete {c.path}.json and {c.path}.safetensors and it is rebuilt" in str(e.value)
    for suffix in (".json", ".safetensors"):
        Path(c.path + suffix).unlink()
    again = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=lambda: frames, past_rows=past_rows, progress=False, **_ident(enc)
    )
    np.testing.assert_array_equal(again.latents, c.latents)


def test_a_cache_record_that_is_not_json_is_named_and_rebuilt_once_deleted(enc, frames, past_rows, tmp_path):
    c = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=lambda: frames, past_rows=past_rows, progress=False, **_ident(enc)
    )
    Path(c.path + ".json").write_text('{"encoder_id": ')
    with pytest.raises(
        LatentCacheError,
        match=rf"latent cache {c.path}.json is not valid JSON \(.*\); delete "
        rf"{c.path}.json and {c.path}.safetensors and it is rebuilt",
    ):
        load_or_build_cache(
            tmp_path, encoder=enc, frames_fn=lambda: frames, past_rows=past_rows, progress=False, **_ident(enc)
        )
    Path(c.path + ".json").unlink()
    Path(c.path + ".safetensors").unlink()
    again = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=lambda: frames, past_rows=past_rows, progress=False, **_ident(enc)
    )
    np.testing.assert_array_equal(again.latents, c.latents)


def test_missing_cache(tmp_path, enc):
    with pytest.raises(FileNotFoundError):
        load_cache(tmp_path / "absent", encoder_id=enc.encoder_id, num_frames=M, **_ident(enc))


def test_frame_size_is_part_of_the_identity(enc, frames, past_rows, tmp_path):
    small = frames[:, :32, :32]
    calls = []

    def frames_fn():
        calls.append(1)
        return small

    a = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=frames_fn, past_rows=past_rows, progress=False, frame_size=32, **_ident(enc)
    )
    assert a.meta["frame_size"] == 32 and len(calls) == 1
    # Native-size frames give other latents: another cache, never this one.
    load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=lambda: frames, past_rows=past_rows, progress=False, **_ident(enc)
    )
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    with pytest.raises(LatentCacheMismatch, match="frame_size"):
        load_cache(a.path, encoder_id=enc.encoder_id, num_frames=M, frame_size=64, **_ident(enc))
    with pytest.raises(ValueError, match="frame_size=24"):
        load_or_build_cache(
            tmp_path,
            encoder=enc,
            frames_fn=lambda: frames,
            past_rows=past_rows,
            progress=False,
            frame_size=24,
            **_ident(enc),
        )
