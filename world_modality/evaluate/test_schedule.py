from world_modality.evaluate.schedule import is_replan_frame, is_world_frame, world_window


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
