"""A latent cache is trusted by its contents, not its name: the tensor file carries its identity in its header and
its record the tensor file's sha256, both checked at load."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from world_modality.world.conftest import N
from world_modality.world.encoder import build_world_encoder
from world_modality.world.latent_cache import LatentCacheMismatch, encode_latents, load_cache, load_or_build_cache
from world_modality.world.test_latent_cache import _ident


def _build(folder, enc, frames, rows, **over):
    return load_or_build_cache(folder, encoder=enc, frames_fn=lambda: frames, past_rows=rows, progress=False, **over)


def _again(folder, enc, rows, **over):
    """The cache found again: frames_fn would fail, so a rebuild is never what passes."""
    return load_or_build_cache(folder, encoder=enc, frames_fn=lambda: 1 / 0, past_rows=rows, progress=False, **over)


def test_a_tensor_file_replaced_by_another_datasets_is_refused(enc, frames, other_frames, past_rows, tmp_path):
    """Same frame count, so the same shape: the other dataset's latents were reused (world MSE 0.36 -> 13.2)."""
    mine = _build(tmp_path / "a", enc, frames, past_rows, **_ident(enc))
    theirs = _build(tmp_path / "b", enc, other_frames, past_rows, **_ident(enc, dataset_fingerprint="fp-b"))
    shutil.copyfile(theirs.path + ".safetensors", mine.path + ".safetensors")
    with pytest.raises(
        LatentCacheMismatch,
        match=rf"latent cache {mine.path}.safetensors: dataset_fingerprint is 'fp-b' in the cache but 'fp-a' was "
        rf"expected; it is never reused: it is not the tensor file its record {mine.path}.json was written with",
    ) as e:
        _again(tmp_path / "a", enc, past_rows, **_ident(enc))
    assert f"delete {mine.path}.json and {mine.path}.safetensors and it is rebuilt" in str(e.value)


def test_a_tensor_file_of_the_same_identity_built_from_other_frames_fails_its_hash(
    enc, frames, other_frames, past_rows, tmp_path
):
    """The header cannot tell two builds under one identity apart (a dataset rewritten in place under the same
    fingerprint, a copy from another machine): the hash recorded at write can."""
    mine = _build(tmp_path / "a", enc, frames, past_rows, **_ident(enc))
    theirs = _build(tmp_path / "b", enc, other_frames, past_rows, **_ident(enc))
    shutil.copyfile(theirs.path + ".safetensors", mine.path + ".safetensors")
    with pytest.raises(LatentCacheMismatch, match=r"sha256 is '[0-9a-f]{16}' in the cache but '[0-9a-f]{16}'") as e:
        _again(tmp_path / "a", enc, past_rows, **_ident(enc))
    assert e.value.field == "sha256" and "delete" in str(e.value)
    Path(mine.path + ".json").unlink()
    Path(mine.path + ".safetensors").unlink()
    rebuilt = _build(tmp_path / "a", enc, frames, past_rows, **_ident(enc))  # the advice works
    np.testing.assert_array_equal(rebuilt.latents, mine.latents)


def test_latents_of_another_window_length_under_this_ones_name_are_refused(enc, frames, past_rows, tmp_path):
    """m2 latents stored under the m4 cache's name: one latent size, one frame count, so every shape agreed."""
    enc4 = build_world_encoder(num_frames=4, image_size=32, seed=0)
    i = np.arange(N)
    rows4 = np.stack([np.maximum(i - k, 0) for k in (3, 2, 1, 0)], axis=1)
    four = _build(tmp_path / "four", enc4, frames, rows4, **_ident(enc4))
    two = _build(tmp_path / "two", enc, frames, past_rows, **_ident(enc))
    assert two.latents.shape == four.latents.shape
    shutil.copyfile(two.path + ".safetensors", four.path + ".safetensors")
    needle = r"encoder_id is 'tiny-vjepa2-m2-\S*' in the cache but 'tiny-vjepa2-m4"
    with pytest.raises(LatentCacheMismatch, match=needle):
        _again(tmp_path / "four", enc4, rows4, **_ident(enc4))


def test_a_record_claiming_another_latent_size_than_the_encoders_is_refused(enc, frames, past_rows, tmp_path):
    c = _build(tmp_path, enc, frames, past_rows, **_ident(enc))
    record = Path(c.path + ".json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "latent_dim": 32}))
    with pytest.raises(LatentCacheMismatch, match=r"latent_dim is 32 in the cache but 64 was expected"):
        _again(tmp_path, enc, past_rows, **_ident(enc))


def test_a_cache_written_before_hashes_were_recorded_loads_as_before(enc, frames, past_rows, tmp_path):
    c = _build(tmp_path, enc, frames, past_rows, **_ident(enc))
    record = Path(c.path + ".json")
    meta = json.loads(record.read_text())
    del meta["sha256"]
    record.write_text(json.dumps(meta))
    save_file(load_file(c.path + ".safetensors"), c.path + ".safetensors")  # no identity in its header
    again = _again(tmp_path, enc, past_rows, **_ident(enc))
    np.testing.assert_array_equal(again.latents, encode_latents(frames, past_rows, enc, progress=False))
    assert load_cache(c.path, encoder_id=enc.encoder_id, num_frames=2, **_ident(enc)).n_frames == N
