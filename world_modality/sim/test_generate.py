"""Demonstration generation in the real simulator: dataset read back, short E2 training, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import numpy as np
import pytest

from world_modality.data.coc import join_annotations, read_annotations  # noqa: E402
from world_modality.data.lerobot import load_dataset  # noqa: E402
from world_modality.jsonl import read_jsonl  # noqa: E402

pytestmark = [pytest.mark.sim, pytest.mark.slow]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from world_modality.sim.generate import generate

    out = tmp_path_factory.mktemp("gen") / "spatial"
    return generate("libero_spatial", [0], 2, out, image_size=64, workers=2, seed=0, progress=False, job_timeout_s=300)


def test_generated_dataset_reads_back_in_the_public_schema(generated):
    ds = load_dataset(generated)
    assert len(ds.episodes) == 2 and ds.fps == 10 and ds.info["control_steps_per_frame"] == 2
    assert set(ds.image_keys) == {"observation.images.image", "observation.images.wrist_image"}
    assert ds.state.shape[1] == 8 and ds.action.shape[1] == 7
    assert ds.episodes[0].task.startswith("pick up the black bowl")
    assert set(ds.action[:, 6].round().tolist()) <= {-1.0, 1.0}  # gripper: -1 open, +1 close
    img = ds.images("observation.images.image")
    assert img.shape[1:] == (64, 64, 3)
    texts, missing = join_annotations(ds, read_annotations(generated / "coc.jsonl"))
    assert missing == 0 and any("black bowl" in t for t in texts)
    assert not (generated.parent / "spatial.partial").exists()
    # Generated frames record their render profile (the fast default), which evaluation renders with again.
    assert ds.info["render_profile"] == "fast"
    assert ds.info["render_settings"] == {"name": "fast", "msaa_samples": 0, "shadows": False}


def test_demonstrations_start_from_fresh_placements_never_the_stored_states(generated):
    from world_modality.data.starts import OVERLAP_TOLERANCE, nearest, read_training_starts
    from world_modality.sim.suites import load_task

    starts = read_training_starts(generated)
    assert starts["kind"] == "states" and len(starts["states"]) == 2
    states = np.array([s["sim_state"] for s in starts["states"]])
    stored = np.asarray(load_task("libero_spatial", 0)[1])
    dist, _ = nearest(states, stored)
    assert (dist > OVERLAP_TOLERANCE).all()  # no demonstration replays a benchmark initial state
    assert np.abs(states[0, 1:] - states[1, 1:]).max() > OVERLAP_TOLERANCE  # two different placements
    assert "init_state_index" not in json.dumps(load_dataset(generated).info["source"])


def test_a_generation_setup_error_is_not_an_expert_failure_and_a_rerun_retries_it(tmp_path):
    out = tmp_path / "ds"
    cmd = [
        sys.executable,
        "-m",
        "world_modality.cli",
        "generate",
        "--suite",
        "libero_spatial",
        "--tasks",
        "0",
        "--episodes-per-task",
        "1",
        "--out",
        str(out),
        "--image-size",
        "32",
        "--workers",
        "1",
        "--seed",
        "2",
    ]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "MUJOCO_GL": "banana"})
    assert bad.returncode != 0 and not (out / "meta").exists()
    log = tmp_path / "ds.partial" / "attempts.jsonl"
    records, _ = read_jsonl(log)  # none when the log was never written
    assert all(r.get("error") for r in records)  # logged as errors, none as an expert failure
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, env=env)
    assert len(load_dataset(out).episodes) == 1


def test_short_e2_training_on_generated_data(generated, tmp_path):
    from conftest import tiny_config
    from world_modality.analysis.offline import evaluate_offline
    from world_modality.train import train

    cfg = tiny_config(generated, tmp_path / "e2", image_size=64, world_image_size=64, max_epochs=1, val_fraction=0.5)
    ckpt = train(cfg, progress=False)
    result = evaluate_offline(ckpt, modes=["predicted"])
    assert result["n_episodes"] == 1 and result["world_mse_copy_last"] > 0


def test_generation_resumes_after_a_kill(tmp_path):
    out = tmp_path / "ds"
    cmd = [
        sys.executable,
        "-m",
        "world_modality.cli",
        "generate",
        "--suite",
        "libero_spatial",
        "--tasks",
        "1",
        "--episodes-per-task",
        "2",
        "--out",
        str(out),
        "--image-size",
        "64",
        "--workers",
        "1",
        "--seed",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "ds.partial" / "attempts.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first, _ = read_jsonl(log)  # a line the kill tore is the attempt that reruns
    assert first and not (out / "meta").exists()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    ds = load_dataset(out)
    assert len(ds.episodes) == 2
    attempts = [e["attempt"] for e in ds.info["source"]["episodes"]]
    assert len(set(attempts)) == 2
    if first[0]["success"]:  # the episode finished before the kill is reused, not re-simulated
        assert first[0]["attempt"] in attempts


def test_e4_trains_on_generated_data_with_its_annotations(generated, tmp_path, capsys):
    from conftest import tiny_config
    from world_modality.train import train

    cfg = tiny_config(
        generated,
        tmp_path / "e4",
        preset="E4",
        coc_jsonl=str(generated / "coc.jsonl"),
        image_size=64,
        world_image_size=64,
        max_epochs=1,
        val_fraction=0.5,
    )
    ckpt = train(cfg, progress=False)
    out = capsys.readouterr().out
    n = len(load_dataset(generated))
    assert f"{n}/{n} frames annotated, 0 missing" in out
    record = read_jsonl(ckpt.parent.parent / "metrics.jsonl")[0][-1]
    assert record["text_loss"] > 0  # the chain-of-causation tokens were trained on
