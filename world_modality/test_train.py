"""The training loop's small parts: the collective timeout, and metrics lines a killed run left behind."""

import json
from datetime import timedelta

import pytest

from conftest import tiny_config
from world_modality.train import _drop_metrics_after, train


class _Built(Exception):
    pass


def test_accelerator_gets_the_configured_distributed_timeout(fixture_dataset, tmp_path, monkeypatch):
    import accelerate
    from accelerate.utils import InitProcessGroupKwargs

    seen = {}

    def record(**kwargs):
        seen.update(kwargs)
        raise _Built

    monkeypatch.setattr(accelerate, "Accelerator", record)
    with pytest.raises(_Built):
        train(tiny_config(fixture_dataset, tmp_path / "run", dist_timeout_minutes=240), progress=False)
    handlers = [h for h in seen["kwargs_handlers"] if isinstance(h, InitProcessGroupKwargs)]
    assert len(handlers) == 1 and handlers[0].timeout == timedelta(minutes=240)
    # Hours by default: NCCL's own 10 minutes end a run whose main process is still encoding latents.
    assert tiny_config(fixture_dataset, tmp_path).train.dist_timeout_minutes >= 120


def test_a_torn_last_metrics_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"kind": "train", "epoch": 1, "step": 30}, {"kind": "train", "epoch": 2, "step": 60}]
    # Killed (or out of disk) half-way through the third record.
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "train", "epoch": 3, "st')
    _drop_metrics_after(path, 60)
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records)
    _drop_metrics_after(path, 30)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:1]


@pytest.mark.slow
def test_a_run_without_checkpoints_starts_its_metrics_afresh(fixture_dataset, tmp_path):
    """A first epoch killed while logging leaves a torn line and no checkpoint: the rerun starts at
    step 0 and its log holds only its own records, each a whole line."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "epoch": 1, "step": 30, "action_lo')
    train(tiny_config(fixture_dataset, run, preset="E0", max_epochs=1, num_threads=1), progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 30)] and "action_loss" in rows[0]
