"""Tests for building the latent cache: frames read a batch at a time, one build when processes race, no
NaN/inf latents cached, and one cache per number of world tokens."""

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from world_modality.world.conftest import M, N
from world_modality.world.encoder import build_world_encoder
from world_modality.world.latent_cache import (
    LatentCacheError,
    LatentCacheMismatch,
    cache_key,
    encode_latents,
    load_cache,
    load_or_build_cache,
)
from world_modality.world.test_latent_cache import _ident


def test_memmap_frames_are_read_a_batch_at_a_time(enc, tmp_path):
    """The frame cache's memmap goes in as it is: encoding reads one batch of windows at a time."""
    import tracemalloc

    n, side = 600, 96
    frames = np.lib.format.open_memmap(tmp_path / "frames.npy", mode="w+", dtype=np.uint8, shape=(n, side, side, 3))
    frames[:] = np.random.default_rng(1).integers(0, 256, frames.shape, dtype=np.uint8)
    frames.flush()
    mapped = np.load(tmp_path / "frames.npy", mmap_mode="r", allow_pickle=False)
    i = np.arange(n)
    rows = np.stack([np.maximum(i - 1, 0), i], axis=1)
    tracemalloc.start()
    try:
        z = encode_latents(mapped, rows, enc, batch_size=8, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(z, encode_latents(np.array(frames), rows, enc, batch_size=8, progress=False), atol=1e-6)
    assert peak < mapped.nbytes / 10, (peak, mapped.nbytes)


def _build_when_both_are_ready(cache_dir, scratch):
    """One of two processes: wait until both are up, then load or build the same cache."""
    scratch = Path(scratch)
    (scratch / f"ready-{os.getpid()}").touch()
    while len(list(scratch.glob("ready-*"))) < 2:
        time.sleep(0.05)
    enc = build_world_encoder(num_frames=M, image_size=32, seed=0)
    frames = np.random.default_rng(0).integers(0, 256, (N, 36, 36, 3), dtype=np.uint8)
    i = np.arange(N)

    def frames_fn():
        with open(scratch / "builds", "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # the other process reaches the cache while this one is still building
        return frames

    cache = load_or_build_cache(
        cache_dir,
        encoder=enc,
        frames_fn=frames_fn,
        past_rows=np.stack([np.maximum(i - 1, 0), i], 1),
        progress=False,
        **_ident(enc),
    )
    return cache.path, cache.latents


def test_processes_started_together_build_the_cache_once(tmp_path):
    # As evaluation workers (shuffle memory) or one training process per GPU would on a fresh dataset.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_build_when_both_are_ready, [tmp_path / "cache"] * 2, [tmp_path] * 2))
    assert len((tmp_path / "builds").read_text().splitlines()) == 1
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_nonfinite_latents_are_never_cached(frames, past_rows, tmp_path, monkeypatch):
    """A float16 encoder that overflows gave NaN latents, cached and trained on."""
    enc = build_world_encoder(num_frames=M, image_size=32, seed=0)
    real = enc.encode

    def overflowing(x):
        z = real(x)
        z[0, 0] = float("inf")
        return z

    monkeypatch.setattr(enc, "encode", overflowing)
    with pytest.raises(
        LatentCacheError,
        match=r"gave NaN/inf latents for 4 of 10 windows \(first: row 0\); nothing "
        r"was cached",
    ):
        load_or_build_cache(
            tmp_path,
            encoder=enc,
            frames_fn=lambda: frames,
            past_rows=past_rows,
            batch_size=3,
            progress=False,
            **_ident(enc),
        )
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.json"))


def test_cache_key_includes_world_tokens(enc):
    """Another number of spatial tokens is another cache; N = 1 keeps the key caches had before the option."""
    args = (enc.encoder_id, M, 1, "observation.images.image", "fp-a", 32)
    one = cache_key(*args)
    assert cache_key(*args, world_tokens=1) == one
    four, nine = cache_key(*args, world_tokens=4), cache_key(*args, world_tokens=9)
    assert len({one, four, nine}) == 3 and four.startswith("tiny-vjepa2-m2-t4-st1-image-")


def test_a_cache_of_other_world_tokens_is_never_reused(enc, frames, past_rows, tmp_path):
    four = build_world_encoder(num_frames=M, image_size=32, seed=0, world_tokens=4)
    calls = []

    def frames_fn():
        calls.append(1)
        return frames

    one_cache = load_or_build_cache(
        tmp_path, encoder=enc, frames_fn=frames_fn, past_rows=past_rows, progress=False, **_ident(enc)
    )
    four_cache = load_or_build_cache(
        tmp_path, encoder=four, frames_fn=frames_fn, past_rows=past_rows, progress=False, **_ident(four)
    )
    assert len(calls) == 2 and four_cache.path != one_cache.path
    assert four_cache.latents.shape == (N, 4 * enc.latent_dim) and four_cache.meta["world_tokens"] == 4
    np.testing.assert_allclose(four_cache.latents.reshape(N, 4, -1).mean(1), one_cache.latents, rtol=1e-4, atol=1e-5)
    again = load_or_build_cache(
        tmp_path, encoder=four, frames_fn=frames_fn, past_rows=past_rows, progress=False, **_ident(four)
    )
    assert len(calls) == 2 and np.array_equal(again.latents, four_cache.latents)
    # Loading one as the other is a mismatch naming world_tokens (and the encoder, whose id carries N).
    ident = dict(num_frames=M, **_ident(enc))
    with pytest.raises(LatentCacheMismatch, match="world_tokens is 4 in the cache but 1"):
        load_cache(four_cache.path, encoder_id=four.encoder_id, world_tokens=1, **ident)
    with pytest.raises(LatentCacheMismatch, match="encoder_id"):
        load_cache(four_cache.path, encoder_id=enc.encoder_id, world_tokens=4, **ident)
    # A cache from before world_tokens existed (no such field) holds one token.
    meta_path = Path(one_cache.path + ".json")
    meta = json.loads(meta_path.read_text())
    del meta["world_tokens"]
    meta_path.write_text(json.dumps(meta))
    assert load_cache(one_cache.path, encoder_id=enc.encoder_id, **ident).latent_dim == enc.latent_dim
    with pytest.raises(LatentCacheMismatch, match="world_tokens is 1 in the cache but 4"):
        load_cache(one_cache.path, encoder_id=enc.encoder_id, world_tokens=4, **ident)
