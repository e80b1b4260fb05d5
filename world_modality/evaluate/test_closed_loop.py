"""Closed-loop evaluation in the real simulator: episodes file, resume after a kill, shards, video."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import pytest

from world_modality.evaluate.closed_loop import (  # noqa: E402
    EvalSettings,
    episode_key,
    episodes_path,
    evaluate,
    read_episodes,
)

pytestmark = [pytest.mark.sim, pytest.mark.slow]


@pytest.fixture(scope="module")
def checkpoint(fixture_dataset, tmp_path_factory):
    """A tiny E2 trained on the synthetic fixture: it shares LIBERO's keys and shapes, so it can
    drive the simulator (badly); these tests are about the loop, not the policy."""
    from conftest import tiny_config
    from world_modality.train import train

    return train(tiny_config(fixture_dataset, tmp_path_factory.mktemp("cl") / "e2", max_epochs=1), progress=False)


def eval_cmd(ckpt, out, *extra):
    return [
        sys.executable,
        "-m",
        "world_modality.eval_libero",
        "--checkpoint",
        str(ckpt),
        "--suite",
        "libero_spatial",
        "--tasks",
        "0,1",
        "--n_episodes",
        "2",
        "--workers",
        "1",
        "--max_steps",
        "24",
        "--out",
        str(out),
        *extra,
    ]


def test_killed_evaluation_resumes_with_every_episode_once(checkpoint, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.Popen(
        eval_cmd(checkpoint, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    path = out / "episodes.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and len(read_episodes(path)) < 2:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_episodes(path)
    assert 2 <= len(before) < 4, "the kill should land mid-evaluation"
    done = subprocess.run(eval_cmd(checkpoint, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = read_episodes(path)
    keys = [episode_key(r) for r in after]
    assert len(keys) == len(set(keys)) == 4
    assert {(k[1], k[2]) for k in keys} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert after[: len(before)] == before  # append-only: nothing rewritten
    for r in after:
        assert r["steps"] <= 24 and r["failure"] in (None, "timeout") and r["experiment"] == "E2"
    assert "libero_spatial:" in done.stdout
    assert "[info]" not in done.stdout + done.stderr  # LIBERO's task-order notices, once per worker and lookup
    assert "stored initial states: task 0: 0-1; task 1: 0-1; step limit 24 (not the public limit)" in done.stdout


def test_shards_split_the_episodes_and_video_is_written(checkpoint, tmp_path):
    out = tmp_path / "eval"
    paths = [
        evaluate(
            EvalSettings(
                checkpoint=str(checkpoint),
                suite="libero_spatial",
                tasks=(0,),
                n_episodes=2,
                workers=1,
                max_steps=16,
                video=1,
                shard=(i, 2),
                out=str(out),
                device="cpu",
            ),
            progress=False,
        ).path
        for i in range(2)
    ]
    recs = [read_episodes(p) for p in paths]
    assert [len(r) for r in recs] == [1, 1]
    assert {r[0]["init_index"] for r in recs} == {0, 1}
    video = [r[0] for r in recs if r[0]["init_index"] == 0][0]["video"]
    assert (out / video).stat().st_size > 0


def test_init_states_runs_exactly_the_named_stored_states(checkpoint, tmp_path):
    """--init_states 10-49 keeps tuning states 0-9 out of a recipe's final figure: only the named states run."""
    import json

    from world_modality.config import ConfigError

    def settings(**kw):
        base = dict(checkpoint=str(checkpoint), tasks=(0,), workers=1, max_steps=4, out=str(tmp_path / "e"))
        return EvalSettings(**{**base, **kw}, device="cpu")

    with pytest.raises(ConfigError, match=r"--init_states 3,50 names state 50, which .* \[0, 49\]"):
        evaluate(settings(init_states=(3, 50)), progress=False)
    with pytest.raises(ConfigError, match="not both"):
        settings(init_states=(3,), n_episodes=2)
    run = evaluate(settings(init_states=(3, 1)), progress=False)
    assert sorted(r["init_index"] for r in read_episodes(run.path)) == [1, 3]
    assert json.loads((tmp_path / "e" / "settings.json").read_text())["init_states"] == {"0": [3, 1]}


def test_a_checkpoint_the_workers_cannot_load_fails_with_its_own_error(checkpoint, tmp_path):
    # The parent reads only the config; the policy loads in each worker, whose error must come back as is.
    import shutil

    from safetensors.torch import load_file, save_file

    from world_modality.policy.checkpoint import CheckpointError

    broken = Path(shutil.copytree(checkpoint, tmp_path / "ck"))
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["act_queries"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['act_queries'\]"):
        evaluate(
            EvalSettings(checkpoint=str(broken), tasks=(0,), n_episodes=1, workers=1, out=str(tmp_path / "eval")),
            progress=False,
        )
    assert read_episodes(episodes_path(tmp_path / "eval", (0, 1))) == []


def test_oracle_memory_is_refused_in_closed_loop(checkpoint):
    from world_modality.inference.runner import PolicyRunner

    with pytest.raises(ValueError, match="offline"):
        PolicyRunner(checkpoint, "oracle")


def test_cameras_render_at_the_recorded_size_and_the_policy_acts(tmp_path):
    """A policy trained at 32 px on frames recorded at 48 px: the simulator renders at 48 and the
    runner resizes as the frame cache did (pixel equality: test_runner.py)."""
    from conftest import tiny_config
    from world_modality.data.fixture import make_fixture_dataset
    from world_modality.evaluate.rollout import run_episode
    from world_modality.inference.runner import PolicyRunner
    from world_modality.sim.env import IMAGE_KEY, WRIST_KEY, LiberoEnv
    from world_modality.train import train

    data = make_fixture_dataset(tmp_path / "data", n_episodes=4, length=12, image_size=48, seed=1)
    ckpt = train(tiny_config(data, tmp_path / "run", max_epochs=1), progress=False)
    runner = PolicyRunner(ckpt, device="cpu")
    with LiberoEnv(
        "libero_spatial", 0, image_size=runner.cfg.data.image_size, camera_sizes=runner.render_sizes, max_steps=8
    ) as env:
        obs = env.reset(0)
        assert obs[IMAGE_KEY].shape == obs[WRIST_KEY].shape == (48, 48, 3) and runner.cfg.data.image_size == 32
        result = run_episode(env, runner, 0, replan_every=4)
    assert result["failure"] in (None, "timeout") and 0 < result["steps"] <= 8
    # The episode's seconds split into physics, rendering and policy, each spent and none more than the whole.
    timing = result["timing"]
    assert set(timing) == {"physics_s", "rendering_s", "policy_s"}
    assert all(0 < v for v in timing.values()) and sum(timing.values()) <= result["seconds"] + 0.05


@pytest.mark.parametrize(
    "suite, given",
    [
        ("libero_spatial_lan", "lift the black bowl between the plate and ramekin and set it on the plate"),
        (
            "libero_spatial_task",
            "pick the akita black bowl not between the plate and the ramekin and place it on the plate",
        ),
    ],
    ids=["lan", "task"],
)
def test_perturbed_suites_record_the_instruction_the_policy_was_given(checkpoint, tmp_path, suite, given):
    # LIBERO-PRO keeps the BDDL file name (the registry's instruction) and rewrites its (:language ...): the policy
    # is told, and episodes.jsonl records, the perturbed instruction, not the file-name one of the training data.
    out = tmp_path / "eval"
    cmd = [
        sys.executable,
        "-m",
        "world_modality.eval_libero",
        "--checkpoint",
        str(checkpoint),
        "--suite",
        suite,
        "--tasks",
        "0",
        "--n_episodes",
        "1",
        "--workers",
        "1",
        "--max_steps",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (rec,) = read_episodes(out / "episodes.jsonl")
    assert rec["suite"] == suite and rec["task_id"] == 0 and rec["failure"] in (None, "timeout")
    assert rec["task"] == given
    assert rec["task"] != "pick up the black bowl between the plate and the ramekin and place it on the plate"
