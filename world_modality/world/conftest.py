"""Fixtures the latent-cache tests share: one tiny encoder, its frames and their windows."""

import numpy as np
import pytest

from world_modality.world.encoder import build_world_encoder

M = 2  # frames per window
N = 10  # frames


@pytest.fixture(scope="module")
def enc():
    return build_world_encoder(num_frames=M, image_size=32, seed=0)


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (N, 36, 36, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def past_rows():
    # Clamped at the episode start, as window builders do: [max(i-1,0), i].
    i = np.arange(N)
    return np.stack([np.maximum(i - 1, 0), i], axis=1)


@pytest.fixture(scope="module")
def other_frames():
    """Another dataset's frames, as many as `frames`: a cache of them has the same shape."""
    return np.random.default_rng(1).integers(0, 256, (N, 36, 36, 3), dtype=np.uint8)
