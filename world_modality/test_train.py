"""The training loop's small parts: the collective timeout, metrics lines a killed run left behind, the run
folder (--no-resume never mixes runs, a bad --output_dir is refused first, a failed start leaves no folder),
and a NaN/inf loss or weight that stops the run at its step."""

import json
from datetime import timedelta

import pytest

from conftest import tiny_config
from world_modality.config import ConfigError
from world_modality.train import train
from world_modality.train_output import drop_metrics_after


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
    drop_metrics_after(path, 60)
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records)
    drop_metrics_after(path, 30)
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


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_no_resume_into_an_existing_run_starts_a_clean_run(fixture_dataset, tmp_path, capsys):
    """The old run's higher step numbers sorted last: rotation deleted the new checkpoints as they were
    written and `final checkpoint:` named the old model, with both runs in metrics.jsonl."""
    run = tmp_path / "run"
    old_final = train(tiny_config(fixture_dataset, run, preset="E0", max_epochs=2, num_threads=1), progress=False)
    assert old_final.name == "step-00000060"
    capsys.readouterr()
    final = train(
        tiny_config(fixture_dataset, run, preset="E0", max_epochs=1, num_threads=1, resume=False), progress=False
    )
    assert final == run / "checkpoints" / "step-00000030"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000030"]
    assert [(r["epoch"], r["step"]) for r in _metrics(run)] == [(1, 30)]
    (aside,) = tmp_path.glob("run.old-*")
    assert f"[train] --no-resume: moved the earlier contents of {run} to {aside}" in capsys.readouterr().out
    assert (aside / "checkpoints" / "step-00000060").is_dir() and len(_metrics(aside)) == 2


@pytest.mark.slow
def test_resuming_a_run_past_max_epochs_is_refused(fixture_dataset, tmp_path):
    """Its "final checkpoint" was the longer-trained model of the earlier command."""
    run = tmp_path / "run"
    train(tiny_config(fixture_dataset, run, preset="E0", max_epochs=2, num_threads=1), progress=False)
    with pytest.raises(
        ConfigError,
        match=r"cannot resume .*run to --max_epochs 1: its newest checkpoint "
        r"step-00000060 has already trained 2 epoch\(s\)\. Use --max_epochs >= 2",
    ):
        train(tiny_config(fixture_dataset, run, preset="E0", max_epochs=1, num_threads=1), progress=False)
    # Killed mid-epoch 2 (its epoch-end checkpoint gone): resuming to one epoch would report 1.67 epochs as final.
    import shutil

    mid = tmp_path / "mid"
    cfg = dict(preset="E0", num_threads=1, save_every_steps=10)
    shutil.rmtree(train(tiny_config(fixture_dataset, mid, max_epochs=2, **cfg), progress=False))
    with pytest.raises(ConfigError, match=r"step-00000050 has already trained 1 epoch\(s\) and part of the next"):
        train(tiny_config(fixture_dataset, mid, max_epochs=1, **cfg), progress=False)
    assert train(tiny_config(fixture_dataset, mid, max_epochs=2, **cfg), progress=False).name == "step-00000060"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["loss", "weights"])
def test_a_nonfinite_loss_or_weight_stops_training_at_that_step(fixture_dataset, tmp_path, monkeypatch, where):
    """`--lr inf` trained with action_loss=nan to a "final checkpoint". A NaN at step 8 (checkpoints every 5
    steps) must stop the run there, name step, epoch and loss, and keep step 5, the last finite checkpoint."""
    import torch

    from world_modality.policy.checkpoint import load_checkpoint
    from world_modality.policy.checkpoint_store import checkpoints_in
    from world_modality.policy.model import WorldModalityPolicy
    from world_modality.train import TrainingDiverged

    calls = {"n": 0}
    if where == "loss":
        real = WorldModalityPolicy.losses

        def losses(self, batch):
            out = real(self, batch)
            calls["n"] += 1
            if calls["n"] == 8:
                out["action_loss"] = out["action_loss"] * float("nan")
                out["loss"] = out["loss"] + out["action_loss"]
            return out

        monkeypatch.setattr(WorldModalityPolicy, "losses", losses)
        needle = r"training diverged at step 8 \(epoch 1, batch 8 of 30\): action_loss = nan;"
    else:
        real_step = torch.optim.AdamW.step

        def step(self, *args, **kwargs):
            out = real_step(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 8:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("inf"))
            return out

        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        needle = r"training diverged at step 8 \(epoch 1, batch 8 of 30\): the losses were finite but the update"
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=needle) as e:
        train(
            tiny_config(fixture_dataset, run, preset="E0", max_epochs=1, num_threads=1, save_every_steps=5),
            progress=False,
        )
    assert f"the last finite checkpoint, {run / 'checkpoints' / 'step-00000005'}, is kept" in str(e.value)
    assert [p.name for p in checkpoints_in(run)] == ["step-00000005"]
    assert not (run / "LATEST").exists() and not (run / "metrics.jsonl").exists()
    policy = load_checkpoint(run / "checkpoints" / "step-00000005")
    assert all(bool(torch.isfinite(p).all()) for p in policy.parameters())


def test_an_output_dir_that_is_a_file_is_refused_before_any_data_is_read(fixture_dataset, tmp_path, monkeypatch):
    import world_modality.train as train_module

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(train_module, "prepare_data", no_data)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match=r"--output_dir .*taken is a file; expected a folder"):
        train(tiny_config(fixture_dataset, tmp_path / "taken"), progress=False)
    with pytest.raises(ConfigError, match=r"--output_dir .*taken/run cannot be created: .*taken is a file"):
        train(tiny_config(fixture_dataset, tmp_path / "taken" / "run"), progress=False)


def test_a_run_that_fails_on_its_data_leaves_no_run_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "runs" / "run"), progress=False)
    assert not (tmp_path / "runs").exists()


def test_learning_rate_warms_up_then_holds_or_decays():
    from world_modality.optim import lr_at

    constant = [lr_at(u, 1.0, warmup=4, schedule="constant", total=20) for u in range(20)]
    assert constant[:5] == [0.25, 0.5, 0.75, 1.0, 1.0] and set(constant[4:]) == {1.0}
    cosine = [lr_at(u, 1.0, warmup=4, schedule="cosine", total=20) for u in range(21)]
    assert cosine[:4] == constant[:4] and cosine[4] == 1.0
    assert all(a > b for a, b in zip(cosine[4:20], cosine[5:21])) and cosine[12] == pytest.approx(0.5)
    assert cosine[20] == pytest.approx(0.0, abs=1e-12)
    # No warmup and a constant schedule: the configured rate at every update, as before schedules existed.
    assert {lr_at(u, 3e-4, warmup=0, schedule="constant", total=5) for u in range(5)} == {3e-4}


def test_ema_averages_trainable_weights_and_swaps_them_in_only_inside_the_block():
    import torch

    from world_modality.optim import Ema

    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    ema = Ema(model, 0.5)
    assert ema.names == ["weight"]
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert ema.tensors()["weight"].allclose(start + 1.0)
    with ema.applied(model):
        assert model.weight.detach().allclose(start + 1.0)
    assert model.weight.detach().allclose(start + 2.0)
    other = Ema(model, 0.9)
    other.load(ema.tensors())
    assert other.tensors()["weight"].equal(ema.tensors()["weight"])
    with pytest.raises(ValueError, match="missing"):
        other.load({})


def test_scale_flags_parse_and_defaults_keep_the_old_loop(fixture_dataset, tmp_path):
    from world_modality.config import parse_train_args

    cfg = parse_train_args(
        [
            "--dataset",
            str(fixture_dataset),
            "--max_grad_norm",
            "0.5",
            "--num_workers",
            "2",
            "--warmup_steps",
            "10",
            "--lr_schedule",
            "cosine",
            "--grad_accum_steps",
            "4",
            "--ema_decay",
            "0.99",
            "--no-val_loss",
        ]
    ).train
    assert (
        cfg.grad_clip,
        cfg.num_workers,
        cfg.warmup_steps,
        cfg.lr_schedule,
        cfg.grad_accum_steps,
        cfg.ema_decay,
        cfg.val_loss,
    ) == (0.5, 2, 10, "cosine", 4, 0.99, False)
    t = tiny_config(fixture_dataset, tmp_path).train
    assert (t.num_workers, t.warmup_steps, t.lr_schedule, t.grad_accum_steps, t.ema_decay) == (0, 0, "constant", 1, 0)
    for bad in ({"lr_schedule": "linear"}, {"ema_decay": 1.0}, {"grad_accum_steps": 0}, {"num_workers": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            tiny_config(fixture_dataset, tmp_path, **bad)
