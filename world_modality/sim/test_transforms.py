"""Observation conversions without the simulator: the 180-degree rotation and the 8-D state."""

import numpy as np
import pytest

from world_modality.sim.transforms import flip_image, quat2axisangle, state8


@pytest.mark.parametrize("shape", [(5, 5, 3), (4, 7, 3)])
def test_flip_image_is_a_180_degree_rotation_not_a_flip_or_transpose(shape):
    # Every pixel distinct: no symmetry for a wrong transform to hide behind (a square frame included, where
    # a transpose keeps the shape).
    h, w, _ = shape
    raw = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    out = flip_image(raw)
    assert out.shape == shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    for r in range(h):
        for c in range(w):
            np.testing.assert_array_equal(out[r, c], raw[h - 1 - r, w - 1 - c])
    wrong = [raw[::-1], raw[:, ::-1], raw]
    if h == w:
        wrong.append(raw.transpose(1, 0, 2))
    for other in wrong:
        assert not np.array_equal(out, other)


def test_flip_image_moves_the_top_left_corner_to_the_bottom_right():
    raw = np.zeros((6, 8, 3), np.uint8)
    raw[0, 1] = (255, 0, 0)  # near the top-left corner, off the diagonal
    raw[1, 0] = (0, 255, 0)
    out = flip_image(raw)
    assert tuple(out[5, 6]) == (255, 0, 0) and tuple(out[4, 7]) == (0, 255, 0)
    assert np.count_nonzero(out.any(axis=-1)) == 2


def test_flip_image_twice_is_the_identity_and_leaves_its_input_alone():
    raw = np.random.default_rng(0).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    before = raw.copy()
    np.testing.assert_array_equal(flip_image(flip_image(raw)), raw)
    out = flip_image(raw)
    out[...] = 0
    np.testing.assert_array_equal(raw, before)


def test_state8_layout():
    half = np.sqrt(0.5)
    s = state8(np.array([0.1, 0.2, 0.3]), np.array([half, 0.0, 0.0, half]), np.array([0.04, -0.04]))
    assert s.dtype == np.float32 and s.shape == (8,)
    np.testing.assert_allclose(s, [0.1, 0.2, 0.3, np.pi / 2, 0, 0, 0.04, -0.04], atol=1e-6)
    np.testing.assert_allclose(quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)
