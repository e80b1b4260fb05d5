"""Episode-bounded windows: no window crosses an episode, clamping and masks at the edges."""

import numpy as np
import pytest

from world_modality.data.lerobot import Episode
from world_modality.data.windows import WindowSpec, action_chunk_rows, future_rows, past_frame_rows

LENGTHS = [5, 1, 7, 3]


def episodes():
    ends = np.cumsum(LENGTHS)
    return [Episode(i, int(e - n), int(e), "t") for i, (n, e) in enumerate(zip(LENGTHS, ends))]


def episode_of_row():
    return np.repeat(np.arange(len(LENGTHS)), LENGTHS)


@pytest.mark.parametrize(
    "spec", [WindowSpec(), WindowSpec(num_frames=3, frame_stride=2, future_offset=4, chunk_size=5)]
)
def test_windows_stay_in_episode(spec):
    eps, ep_of = episodes(), episode_of_row()
    past, fut = past_frame_rows(eps, spec), future_rows(eps, spec)
    chunk, mask = action_chunk_rows(eps, spec)
    n = sum(LENGTHS)
    assert past.shape == (n, spec.num_frames) and fut.shape == (n,)
    assert chunk.shape == mask.shape == (n, spec.chunk_size)
    for arr in (past, fut[:, None], chunk):
        assert (ep_of[arr] == ep_of[:, None]).all()
    assert (past[:, -1] == np.arange(n)).all() and (chunk[:, 0] == np.arange(n)).all()
    assert (np.diff(past, axis=1) >= 0).all()


def test_clamping_and_mask_at_edges():
    spec = WindowSpec(num_frames=3, frame_stride=2, future_offset=2, chunk_size=4)
    eps = episodes()
    past = past_frame_rows(eps, spec)
    # episode 2 spans rows 6..12; its second frame looks back 2 and 4 frames -> clamp to row 6
    np.testing.assert_array_equal(past[7], [6, 6, 7])
    np.testing.assert_array_equal(past[10], [6, 8, 10])
    fut = future_rows(eps, spec)
    assert fut[4] == 4 and fut[5] == 5 and fut[6] == 8 and fut[11] == 12
    chunk, mask = action_chunk_rows(eps, spec)
    np.testing.assert_array_equal(chunk[11], [11, 12, 12, 12])
    np.testing.assert_array_equal(mask[11], [True, True, False, False])
    np.testing.assert_array_equal(mask[5], [True, False, False, False])
    assert mask.sum() == sum(min(spec.chunk_size, n - i) for n in LENGTHS for i in range(n))


def test_gapped_episodes_rejected():
    eps = episodes()
    eps[1] = Episode(1, 6, 6, "t")
    with pytest.raises(ValueError, match="contiguously"):
        future_rows(eps, WindowSpec())
    with pytest.raises(ValueError):
        WindowSpec(num_frames=0)
