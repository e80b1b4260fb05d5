"""bench/expert_success.py's figures: an episode that ended in an error says nothing about the expert, so it is
counted apart and left out of every rate and its denominator, and the JSON and the table say so."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_expert_success", ROOT / "bench" / "expert_success.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _episode(success: bool, error: bool = False, seed: int = 1) -> dict:
    r = {"success": success, "steps": 10, "frames": 5, "phase": "done" if success else "grasp", "placement_seed": seed}
    if error:
        r.update({"success": False, "steps": 0, "frames": 0, "phase": "error: RuntimeError('no skill')", "error": True})
    return r


def test_errors_are_left_out_of_the_rates_and_named_apart():
    bench = _bench()
    # Task 0: 6 successes, 1 failure, 3 errors -> 6/7 scored; task 1: every episode an error -> no rate.
    results = [_episode(True)] * 6 + [_episode(False)] + [_episode(False, error=True)] * 3
    row = bench.task_row(0, "pick the bowl", list(range(10)), results, 1.0)
    assert (row["successes"], row["episodes"], row["errors"], row["scored"]) == (6, 10, 3, 7)
    assert row["success_rate"] == 6 / 7
    assert row["failed_init_states"] == [6] and row["error_init_states"] == [7, 8, 9]
    assert set(row["failed_phases"]) == {"6"} and set(row["errored_episodes"]) == {"7", "8", "9"}
    dead = bench.task_row(1, "open the drawer", [0, 1], [_episode(False, error=True)] * 2, 1.0)
    assert dead["scored"] == 0 and dead["success_rate"] is None and dead["failed_init_states"] == []

    figures = bench.suite_figures([row, dead])
    assert (figures["successes"], figures["episodes"], figures["errors"], figures["scored"]) == (6, 12, 5, 7)
    assert figures["success_rate"] == 6 / 7 and figures["min_task_success_rate"] == 6 / 7
    assert "errors" in figures["rate_rule"] and "scored" in figures["rate_rule"]
    line = bench.format_row(row)
    assert "6/7" in line and "85.7%" in line and "errors=[7, 8, 9] (not in the rate)" in line
    assert "n/a" in bench.format_row(dead)


def test_rows_written_before_scored_was_recorded_count_without_their_errors():
    bench = _bench()
    old = {"task_id": 0, "successes": 8, "episodes": 10, "errors": 2, "success_rate": 0.8}
    assert bench.scored(old) == 8 and bench.suite_figures([old])["success_rate"] == 1.0
