from world_modality.inference.schedule import is_replan_frame, is_world_frame, world_window


def test_world_frames_are_exactly_those_some_replan_window_uses():
    for replan, m, s in [(4, 4, 4), (4, 4, 1), (3, 2, 2), (8, 4, 3)]:
        needed = set()
        for r in range(0, 200, replan):
            needed.update(world_window(r, m, s))
        for f in range(1, 150):
            assert is_world_frame(f, replan, m, s) == (f in needed), (replan, m, s, f)


def test_stride_equal_to_replan_renders_no_extra_frames():
    assert all(is_world_frame(f, 4, 4, 4) == is_replan_frame(f, 4) for f in range(100))


def test_window_clamps_to_the_first_frame_like_training():
    assert world_window(0, 4, 4) == [0, 0, 0, 0]
    assert world_window(6, 4, 4) == [0, 0, 2, 6]
    assert world_window(12, 4, 4) == [0, 4, 8, 12]


def _scripted_runner(replan, m, s, chunk=8):
    """An EpisodeRunner whose `act` returns chunk rows tagged (call, row) and records the world window it saw."""
    from collections import deque

    from world_modality.inference.episode import EpisodeRunner

    r = object.__new__(EpisodeRunner)
    r.uses_world, r.num_frames, r.frame_stride, r.chunk_size, r.replan_every = True, m, s, chunk, replan
    r._queue, r._frame, r._world, r.calls = deque(), 0, {}, []

    def act(observation, frames):
        r.calls.append((observation["frame"], [int(f) for f in frames]))
        return [(len(r.calls) - 1, i) for i in range(chunk)]

    r.act = act
    return r


def test_select_action_hands_out_one_action_per_frame_and_asks_only_for_the_scheduled_frames():
    for replan, m, s in [(4, 4, 4), (4, 4, 1), (3, 2, 2), (8, 4, 3)]:
        r = _scripted_runner(replan, m, s)
        for f in range(40):
            assert r.needs_observation == is_replan_frame(f, replan)
            assert r.needs_world_frame == is_world_frame(f, replan, m, s)
            obs = {"frame": f} if r.needs_observation else None
            world = f if r.needs_world_frame else None
            assert r.select_action(obs, world) == (f // replan, f % replan)  # row f % replan of this frame's chunk
        # Each chunk saw exactly the training-style window ending at its frame.
        assert r.calls == [(f, world_window(f, m, s)) for f in range(0, 40, replan)]


def test_select_action_refuses_a_missing_scheduled_input():
    import pytest

    r = _scripted_runner(4, 4, 1)
    with pytest.raises(ValueError, match="world frame"):
        r.select_action({"frame": 0}, None)
    with pytest.raises(ValueError, match="observation"):
        r.select_action(None, 0)
