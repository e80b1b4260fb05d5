"""End to end on the synthetic fixture: train E0/E2, checkpoints, resume, eval-offline."""

import json
import math
import subprocess
import sys
import time

import pytest

from conftest import tiny_config
from world_modality.analysis.offline import evaluate_offline
from world_modality.cli import main as cli_main
from world_modality.data.lerobot import DatasetError
from world_modality.policy.checkpoint import DONE_MARKER, load_checkpoint
from world_modality.policy.checkpoint_store import checkpoints_in
from world_modality.train import train

pytestmark = pytest.mark.slow


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_wrong_instruction_key_fails_before_training_and_names_task(fixture_dataset, tmp_path):
    cfg = tiny_config(fixture_dataset, tmp_path / "run", instruction_key="instruction")
    with pytest.raises(DatasetError, match="task"):
        train(cfg, progress=False)
    assert not checkpoints_in(tmp_path / "run")


def test_e2_learns_the_world_and_opens_the_gate(trained_e2):
    run_dir = trained_e2.parent.parent
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert all(k in metrics[-1] for k in ("action_loss", "world_loss", "gate", "gate_tanh"))
    assert abs(metrics[-1]["gate"]) > 1e-3, "the gate never moved from 0"
    assert math.isclose(metrics[-1]["gate_tanh"], math.tanh(metrics[-1]["gate"]), rel_tol=1e-9)
    assert metrics[-1]["action_loss"] < metrics[0]["action_loss"]
    result = evaluate_offline(trained_e2)
    assert result["world_mse"] < result["world_mse_copy_last"], result
    assert set(result["action_mse"]) == {"predicted", "present", "oracle", "zero", "random", "shuffle"}
    assert (run_dir / "config.json").exists() and (run_dir / "tensorboard").exists() is False


def test_eval_offline_cli_writes_json(trained_e2, tmp_path, capsys):
    out = tmp_path / "off.json"
    assert (
        cli_main(
            [
                "eval-offline",
                "--checkpoint",
                str(trained_e2.parent.parent),
                "--memory",
                "predicted",
                "zero",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["action_mse"]) == {"predicted", "zero"} and "world_mse_copy_last" in result
    assert "copy-last" in capsys.readouterr().out


def test_resume_continues_to_the_same_result(fixture_dataset, tmp_path):
    straight = train(tiny_config(fixture_dataset, tmp_path / "a", max_epochs=2, save_every_steps=7), progress=False)
    train(tiny_config(fixture_dataset, tmp_path / "b", max_epochs=1), progress=False)
    resumed = train(tiny_config(fixture_dataset, tmp_path / "b", max_epochs=2), progress=False)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert len(b) == 2 and a[-1]["step"] == b[-1]["step"]
    for key in ("action_loss", "world_loss", "gate"):
        assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-6, abs=1e-9), key
    pa, pb = load_checkpoint(straight), load_checkpoint(resumed)
    for (name, ta), tb in zip(pa.state_dict().items(), pb.state_dict().values()):
        assert ta.equal(tb) or ta.allclose(tb, atol=1e-6), name


def test_resume_mid_epoch_from_a_step_checkpoint(fixture_dataset, tmp_path):
    full = train(tiny_config(fixture_dataset, tmp_path / "a", max_epochs=1, preset="E0"), progress=False)
    run = tmp_path / "b"
    train(tiny_config(fixture_dataset, run, max_epochs=1, preset="E0", save_every_steps=10), progress=False)
    # Drop the epoch-end checkpoint: the newest left is mid-epoch (step 20 of 30).
    ckpts = checkpoints_in(run)
    import shutil

    shutil.rmtree(ckpts[-1])
    assert checkpoints_in(run)[-1].name == "step-00000020"
    resumed = train(tiny_config(fixture_dataset, run, max_epochs=1, preset="E0", save_every_steps=10), progress=False)
    pa, pb = load_checkpoint(full), load_checkpoint(resumed)
    for (name, ta), tb in zip(pa.state_dict().items(), pb.state_dict().values()):
        assert ta.allclose(tb, atol=1e-6), name


def test_resume_refuses_another_experiment(fixture_dataset, tmp_path):
    from world_modality.config import ConfigError

    train(tiny_config(fixture_dataset, tmp_path / "r", max_epochs=1, preset="E0"), progress=False)
    with pytest.raises(ConfigError, match="disable_future_injection"):
        train(tiny_config(fixture_dataset, tmp_path / "r", max_epochs=2, preset="E2"), progress=False)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_process_training(launcher, fixture_dataset, tmp_path):
    """Several processes (gloo on CPU) through torchrun or `accelerate launch`; Accelerator reads either.

    240 training frames in batches of 16 make 15 batches: 7 rounds of 2, the odd batch dropped. A
    checkpoint every 2 steps asks for one in each round; in the last round the two processes stand
    at different batch indices, and both must agree on whether to save, or one waits in the
    checkpoint's gather while the other is in the epoch's reduce."""
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    exe = str(Path(sys.executable).with_name(launcher))
    # accelerate's --cpu flag starts one process without MPI; --multi_gpu runs torch's launcher, gloo on CPU.
    start = (
        [exe, "--nproc_per_node", "2", "--master_port", "29517"]
        if launcher == "torchrun"
        else [exe, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29518"]
    )
    cmd = start + [
        "-m",
        "world_modality.train",
        "--preset",
        "E2",
        "--dataset",
        str(fixture_dataset),
        "--image_size",
        "32",
        "--world_image_size",
        "32",
        "--output_dir",
        str(tmp_path / "ddp"),
        "--max_epochs",
        "1",
        "--no-tensorboard",
        "--batch_size",
        "16",
        "--save_every_steps",
        "2",
    ]
    # Output to files, not pipes: workers of a hung run outlive a killed launcher and would hold a pipe open.
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            # The launchers start their workers in sessions of their own: end them one by one.
            for child in [*psutil.Process(proc.pid).children(recursive=True), proc]:
                child.kill()
            proc.wait()
            pytest.fail(f"two-process training hung (killed after 300 s): {err.read_text()[-3000:]}")
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "2 process(es)" in stdout
    metrics = read_metrics(tmp_path / "ddp")
    assert len(metrics) == 1 and math.isfinite(metrics[0]["action_loss"]) and metrics[0]["step"] == 14
    ckpts = checkpoints_in(tmp_path / "ddp")
    # Mid-epoch checkpoints at steps 2..12; none in the last round, whose state the epoch end saves.
    assert [c.name for c in ckpts] == ["step-00000012", "step-00000014"]
    state = json.loads((ckpts[0] / "trainer_state.json").read_text())
    assert state["batches_done_in_epoch"] == 12 and len(state["epoch_partial"]["per_process"]) == 2
    assert load_checkpoint(ckpts[-1]).gate() is not None


def test_e4_trains_with_annotations_and_counts_the_missing(fixture_dataset, tmp_path, capsys):
    from world_modality.data.lerobot import load_dataset

    ds = load_dataset(fixture_dataset)
    ann = tmp_path / "coc.jsonl"
    with ann.open("w") as f:
        for ep in ds.episodes:
            for frame in range(0, ep.length, 2):  # every other frame annotated
                f.write(
                    json.dumps(
                        {"episode_index": ep.index, "frame_index": frame, "text": f"the block heads to {ep.task[18:]}"}
                    )
                    + "\n"
                )
    ckpt = train(
        tiny_config(fixture_dataset, tmp_path / "e4", preset="E4", coc_jsonl=str(ann), max_epochs=1), progress=False
    )
    out = capsys.readouterr().out
    assert f"{len(ds) // 2}/{len(ds)} frames annotated, {len(ds) // 2} missing" in out
    metrics = read_metrics(tmp_path / "e4")
    assert metrics[-1]["text_loss"] > 0 and "world_loss" in metrics[-1]
    policy = load_checkpoint(ckpt)
    assert policy.backbone.model.lm_head.weight.requires_grad


# --- training at scale: loader workers, accumulation, schedule, clipping, EMA, validation loss -----------------
def _weights(path, weights=None):
    return load_checkpoint(path, weights=weights).state_dict()


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k


def _without_seconds(run):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run)]


def test_loader_workers_give_the_same_bits(fixture_dataset, tmp_path):
    """Workers only assemble the batches the main process chose; augmentation stays in the main process."""
    runs = {
        n: train(
            tiny_config(
                fixture_dataset, tmp_path / f"w{n}", preset="E2", max_epochs=1, num_workers=n, prefetch_factor=2
            ),
            progress=False,
        )
        for n in (0, 2)
    }
    _same(_weights(runs[0]), _weights(runs[2]))
    assert _without_seconds(tmp_path / "w0") == _without_seconds(tmp_path / "w2")


def test_accumulating_two_batches_equals_one_batch_of_twice_the_size(fixture_dataset, tmp_path):
    # Noise-free losses (mse head, no world loss, no shift) and one-action chunks (every mask full), so the
    # two differ only in float summation order.
    common = {"preset": "E0", "max_epochs": 1, "augment_shift": 0, "chunk_size": 1, "val_loss": False}
    one = train(tiny_config(fixture_dataset, tmp_path / "one", batch_size=8, **common), progress=False)
    two = train(
        tiny_config(fixture_dataset, tmp_path / "two", batch_size=4, grad_accum_steps=2, **common), progress=False
    )
    small = train(tiny_config(fixture_dataset, tmp_path / "small", batch_size=4, **common), progress=False)
    a, b, c = _weights(one), _weights(two), _weights(small)
    for k in a:
        assert a[k].allclose(b[k], rtol=1e-4, atol=1e-5), k
    # Sensitive to the grouping: updating after every batch of 4 lands elsewhere.
    assert not all(a[k].allclose(c[k], rtol=1e-4, atol=1e-5) for k in a)
    assert read_metrics(tmp_path / "one")[-1]["step"] * 2 == read_metrics(tmp_path / "two")[-1]["step"]
    # The validation pass between epochs leaves training untouched: the same weights with it (the default).
    two_epochs = {**common, "batch_size": 4, "max_epochs": 2}
    plain = train(tiny_config(fixture_dataset, tmp_path / "plain", **two_epochs), progress=False)
    checked = train(tiny_config(fixture_dataset, tmp_path / "val", **{**two_epochs, "val_loss": True}), progress=False)
    _same(_weights(plain), _weights(checked))
    assert "val_loss" in read_metrics(tmp_path / "val")[0] and "val_loss" not in read_metrics(tmp_path / "plain")[0]


# Warmup + cosine, clipping, accumulation and EMA, spelled as flags; one torch thread, as in tests/test_faults.py.
SCALE_FLAGS = [
    "--preset",
    "E2",
    "--image_size",
    "32",
    "--world_image_size",
    "32",
    "--max_epochs",
    "2",
    "--batch_size",
    "8",
    "--no-tensorboard",
    "--num_threads",
    "1",
    "--save_every_steps",
    "4",
    "--warmup_steps",
    "3",
    "--lr_schedule",
    "cosine",
    "--max_grad_norm",
    "0.5",
    "--grad_accum_steps",
    "2",
    "--ema_decay",
    "0.9",
]


def test_sigkill_mid_epoch_resumes_exactly_with_schedule_clipping_accumulation_and_ema(fixture_dataset, tmp_path):
    """SIGKILLed mid epoch 2 (fixture: 30 steps per epoch, 60 in all) and rerun with the same command, the run
    ends where an uninterrupted one ends: the schedule position, the EMA weights and the accumulation position
    come back from the checkpoint."""

    def cmd(out):
        return [
            sys.executable,
            "-m",
            "world_modality.train",
            "--dataset",
            str(fixture_dataset),
            "--output_dir",
            str(out),
            *SCALE_FLAGS,
        ]

    subprocess.run(cmd(tmp_path / "a"), check=True, capture_output=True, timeout=600)
    run = tmp_path / "b"
    proc = subprocess.Popen(cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, deadline = run / "checkpoints" / "step-00000040" / DONE_MARKER, time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()
    assert proc.wait() == -9, "training ended before the kill"
    newest = checkpoints_in(run)[-1]
    assert "step-00000040" <= newest.name < "step-00000060" and (newest / "ema.safetensors").exists()
    rerun = subprocess.run(cmd(run), check=True, capture_output=True, text=True, timeout=600)
    assert f"resumed at step {int(newest.name.split('-')[1])}" in rerun.stdout
    straight, resumed = checkpoints_in(tmp_path / "a")[-1], checkpoints_in(run)[-1]
    assert resumed.name == straight.name == "step-00000060"
    for weights in ("raw", "ema"):
        _same(_weights(straight, weights), _weights(resumed, weights))
    assert _without_seconds(tmp_path / "a") == _without_seconds(run)
    # Evaluation loads the average by default; it differs from the weights of the last step.
    ema, raw = _weights(straight), _weights(straight, "raw")
    _same(ema, _weights(straight, "ema"))
    assert any(not ema[k].equal(raw[k]) for k in ema)
    records = read_metrics(run)
    assert len(records) == 2 and all(
        math.isfinite(r["val_loss"]) and math.isfinite(r["val_world_loss"]) for r in records
    )


def test_ema_weights_are_refused_where_none_were_kept(trained_e2):
    from world_modality.policy.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="ema_decay"):
        load_checkpoint(trained_e2, weights="ema")
    _same(_weights(trained_e2), _weights(trained_e2, "raw"))
