"""The demo trains E0 and E2 side by side in two processes and scores both offline."""

import json

import pytest

from conftest import tiny_config
from world_modality.demo import _epochs_logged, _train_side_by_side


@pytest.mark.slow
def test_side_by_side_training_matches_presets_and_scores_both(fixture_dataset, tmp_path, capsys):
    cfgs = {p: tiny_config(fixture_dataset, tmp_path / p.lower(), preset=p, max_epochs=2) for p in ("E0", "E2")}
    runs = _train_side_by_side(cfgs)
    assert set(runs) == {"E0", "E2"}
    for name, run in runs.items():
        assert [r["epoch"] for r in _epochs_logged(run)] == [1, 2]
        saved = json.loads((run / "config.json").read_text())
        assert saved["policy"]["disable_future_injection"] is (name == "E0")
        assert json.loads((run / "eval_offline_val.json").read_text())
        assert "[train]" in (run / "train.log").read_text()  # the child's console went to its log
    shown = capsys.readouterr()
    assert "[E2] epoch 2/2" in shown.out + shown.err  # each epoch is reported as it ends
    # A rerun finds both runs finished: nothing trains again, no epoch is logged twice.
    _train_side_by_side(cfgs)
    assert all(len(_epochs_logged(run)) == 2 for run in runs.values())


@pytest.mark.slow
def test_a_failed_run_stops_the_other_at_once(fixture_dataset, tmp_path):
    long = tiny_config(fixture_dataset, tmp_path / "e2", preset="E2", max_epochs=200)
    broken = tiny_config(tmp_path / "no-such-dataset", tmp_path / "e0", preset="E0")
    with pytest.raises(Exception, match="no-such-dataset"):
        _train_side_by_side({"E0": broken, "E2": long})
    # The other run was stopped, not waited for; it resumes from its checkpoint next time.
    assert len(_epochs_logged(tmp_path / "e2")) < 200


def test_a_torn_metrics_line_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "epoch": 1}\n{"kind": "tr')
    assert [r["epoch"] for r in _epochs_logged(tmp_path)] == [1]


def test_the_demo_trains_with_the_cpu_recipe_scaled_down():
    """`make demo` is the study's `--budget cpu` recipe on fewer tasks, demonstrations and episodes: the same
    image size, batch size and learning-rate schedule."""
    from world_modality.demo import FULL, QUICK
    from world_modality.study.settings import BUDGETS

    cpu = BUDGETS["cpu"]
    for b in (FULL, QUICK):
        assert (b.image_size, b.batch_size, b.lr_schedule) == (cpu.image_size, cpu.batch_size, cpu.lr_schedule)
        assert b.episodes_per_task <= cpu.demos_per_task and len(b.tasks) < 10
