"""Faults with real kills: training SIGKILLed mid-epoch, a checkpoint writer SIGKILLed mid-write; and a run
whose weights blow up, which must stop with one line and keep only finite checkpoints.

Each killed run is rerun with the plain training command and must end exactly where an
uninterrupted run with the same seed ends: same per-epoch metrics, bit-identical final weights.
Exact equality holds because batch order depends only on (seed, epoch), each step's random state
only on (seed, step), checkpoints store float32 tensors and the optimizer state unchanged, and a
mid-epoch checkpoint keeps the epoch's running loss sums. Every run uses one torch thread, so
no reduction order can differ between them.

A killed closed-loop evaluation is covered by
world_modality/evaluate/test_closed_loop.py::test_killed_evaluation_resumes_with_every_episode_once.
"""

import json
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from safetensors.torch import load_file

from world_modality.policy.checkpoint import DONE_MARKER, load_checkpoint
from world_modality.policy.checkpoint_store import checkpoints_in, resolve_checkpoint

pytestmark = pytest.mark.slow

EPOCHS, STEPS_PER_EPOCH, SAVE_EVERY = 3, 30, 5  # fixture: 240 training frames, batch 8
FINAL = f"step-{EPOCHS * STEPS_PER_EPOCH:08d}"


def train_args(dataset, out):
    return [
        "--preset",
        "E2",
        "--dataset",
        str(dataset),
        "--image_size",
        "32",
        "--world_image_size",
        "32",
        "--output_dir",
        str(out),
        "--max_epochs",
        str(EPOCHS),
        "--batch_size",
        "8",
        "--no-tensorboard",
        "--save_every_steps",
        str(SAVE_EVERY),
        "--num_threads",
        "1",
        "--seed",
        "3",
    ]


def train_cmd(dataset, out):
    return [sys.executable, "-m", "world_modality.train", *train_args(dataset, out)]


def run_to_end(dataset, out):
    proc = subprocess.run(train_cmd(dataset, out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def metrics(run_dir):
    """Per-epoch records without the wall-clock time, the one field allowed to differ."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def assert_same_run(run_dir, reference):
    assert metrics(run_dir) == metrics(reference)
    assert [r["epoch"] for r in metrics(run_dir)] == list(range(1, EPOCHS + 1))
    final = resolve_checkpoint(run_dir)
    assert final.name == FINAL
    got = load_file(str(final / "model.safetensors"))
    want = load_file(str(reference / "checkpoints" / FINAL / "model.safetensors"))
    assert got.keys() == want.keys()
    different = [k for k in want if not got[k].equal(want[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"


@pytest.fixture(scope="module")
def reference(fixture_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "straight"
    run_to_end(fixture_dataset, out)
    return out


def test_sigkill_mid_epoch_then_same_command_resumes_to_the_same_run(fixture_dataset, reference, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(fixture_dataset, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once the step-40 checkpoint (mid epoch 2) is complete: epoch 1 is logged, epoch 2's
    # running sums live only in that checkpoint. 50 steps remain, so the kill lands mid-run.
    target = run / "checkpoints" / "step-00000040" / DONE_MARKER
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()
    assert proc.wait() == -9, "training ended before the kill"
    newest = checkpoints_in(run)[-1]
    assert "step-00000040" <= newest.name < FINAL
    assert len(metrics(run)) < EPOCHS

    out = run_to_end(fixture_dataset, run)
    assert f"resumed at step {int(newest.name.split('-')[1])}" in out
    assert_same_run(run, reference)


# Runs the training command with safetensors' writer replaced by one that writes half of
# step 45's model file and then SIGKILLs its own process: a kill in the middle of a write.
DYING_WRITER = textwrap.dedent("""
    import os, signal, sys
    import world_modality.policy.checkpoint as ckpt
    from world_modality.train import main

    real_save_file = ckpt.save_file

    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        if ".tmp-step-00000045-" in filename and filename.endswith("model.safetensors"):
            os.truncate(filename, os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    ckpt.save_file = save_file
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(fixture_dataset, reference, tmp_path):
    run = tmp_path / "torn"
    proc = subprocess.run(
        [sys.executable, "-c", DYING_WRITER, *train_args(fixture_dataset, run)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    folder = run / "checkpoints"
    torn = list(folder.glob(".tmp-step-00000045-*"))
    assert len(torn) == 1 and not (torn[0] / DONE_MARKER).exists()
    assert (torn[0] / "model.safetensors").stat().st_size > 0
    # The half-written folder is invisible: the newest checkpoint is the previous, complete one.
    assert [p.name for p in checkpoints_in(run)][-1] == "step-00000040"
    assert resolve_checkpoint(run).name == "step-00000040"
    assert load_checkpoint(run / "checkpoints" / "step-00000040").gate() is not None

    out = run_to_end(fixture_dataset, run)
    assert "resumed at step 40" in out
    assert not list(folder.glob(".tmp-*")), "the dead writer's temporary folder was left behind"
    assert_same_run(run, reference)


def test_kill_between_logging_an_epoch_and_checkpointing_it(fixture_dataset, tmp_path):
    """The epoch's metrics line is written before its checkpoint: a kill in between leaves a line
    the resumed run would log again. Removing the epoch-end checkpoint recreates that state."""
    from conftest import tiny_config
    from world_modality.train import train

    cfg = dict(preset="E0", max_epochs=1, save_every_steps=SAVE_EVERY, num_threads=1)
    final = train(tiny_config(fixture_dataset, tmp_path / "r", **cfg), progress=False)
    logged = metrics(tmp_path / "r")
    shutil.rmtree(final)
    assert checkpoints_in(tmp_path / "r")[-1].name == f"step-{STEPS_PER_EPOCH - SAVE_EVERY:08d}"
    train(tiny_config(fixture_dataset, tmp_path / "r", **cfg), progress=False)
    assert metrics(tmp_path / "r") == logged


def test_a_diverging_run_exits_2_naming_the_step_and_keeps_only_finite_checkpoints(fixture_dataset, tmp_path):
    """`--lr inf` trained with action_loss=nan to a "final checkpoint" and exit 0. A learning rate that passes
    the config check but blows the weights up (1e30: finite after step 1, NaN loss at step 2) must stop the
    process at step 2 with one line and exit 2, keeping step 1, the last finite checkpoint."""
    import torch

    run = tmp_path / "diverged"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "world_modality.train",
            "--preset",
            "E0",
            "--dataset",
            str(fixture_dataset),
            "--image_size",
            "32",
            "--output_dir",
            str(run),
            "--max_epochs",
            "1",
            "--no-tensorboard",
            "--num_threads",
            "1",
            "--save_every_steps",
            "1",
            "--lr",
            "1e30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]  # after the progress bars of the frame cache
    assert err.startswith(
        "world_modality.train: error: training diverged at step 2 (epoch 1, batch 2 of 30): action_loss = nan;"
    ), err
    assert f"the last finite checkpoint, {run / 'checkpoints' / 'step-00000001'}, is kept" in err
    assert "lower --lr (now 1e+30)" in err and "final checkpoint" not in proc.stdout
    assert [p.name for p in checkpoints_in(run)] == ["step-00000001"] and not (run / "LATEST").exists()
    weights = load_file(str(run / "checkpoints" / "step-00000001" / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
