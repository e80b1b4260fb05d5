"""`eval --arm`'s flags and settings, refused before anything runs: one policy (a checkpoint or an arm), every
convention stated, no flag of this project's policies that would mean nothing for an arm, declared training starts
that can be read."""

import json

import pytest

from world_modality.cli import build_parser
from world_modality.config import ConfigError
from world_modality.eval_libero import settings_from_args
from world_modality.evaluate.closed_loop import arm_overlap

ARM = ["--arm", "pi=ws://127.0.0.1:9", "--arm_convention", "openpi-libero", "--arm_set", "chunk_size=10"]


def settings(*argv):
    return settings_from_args(build_parser().parse_args(["eval", *argv]))


def test_a_stated_arm_becomes_the_settings():
    s = settings(*ARM, "--arm_set", "replan_every=2", "--arm_timeout", "5", "--train_starts", "starts.jsonl")
    assert s.checkpoint is None and s.arm_address == "ws://127.0.0.1:9" and s.arm_timeout_s == 5
    assert s.arm["name"] == "pi" and s.arm["chunk_size"] == 10 and s.arm["replan_every"] == 2
    assert s.train_starts == "starts.jsonl"


@pytest.mark.parametrize(
    "argv, message",
    [
        (ARM[:4], "does not state chunk_size .* --arm_set FIELD=VALUE"),
        ([*ARM, "--checkpoint", "runs/e2"], "exactly one; got both"),
        ([], "exactly one; got neither"),
        (["--checkpoint", "runs/e2", "--train_starts", "d"], "--train_starts describes an external arm"),
        (["--checkpoint", "runs/e2", "--arm_set", "chunk_size=4"], "--arm_set describes an external arm"),
        ([*ARM, "--memory", "zero"], "--memory 'zero' does not apply to arm 'pi'"),
        ([*ARM, "--replan_every", "2"], "the arm's spec states replan_every"),
        ([*ARM, "--policy_server", "h:1"], "--policy_server 'h:1' does not apply"),
        ([*ARM, "--device", "cuda"], "--device 'cuda' does not apply"),
        ([*ARM, "--render_profile", "fast"], "differs from arm 'pi'.s stated render_profile 'libero'"),
        ([*ARM, "--arm_timeout", "0"], "--arm_timeout must be positive"),
        (["--arm", "pi=gpu:8000", "--arm_convention", "openpi-libero"], r"ws://HOST:PORT"),
        ([*ARM, "--arm_set", "gripper=+1"], "gripper is '\\+1', expected"),
    ],
    ids=[
        "no-chunk",
        "both",
        "neither",
        "starts-without-arm",
        "field-without-arm",
        "memory",
        "replan",
        "policy-server",
        "device",
        "render-profile",
        "timeout",
        "address",
        "gripper",
    ],
)
def test_a_bad_arm_evaluation_is_refused_naming_why(argv, message):
    with pytest.raises(ConfigError, match=message):
        settings(*argv)


def test_declared_training_starts_must_be_readable(tmp_path):
    per_task = {0: [0]}
    with pytest.raises(ConfigError, match="does not exist"):
        arm_overlap("pi", str(tmp_path / "missing"), "libero_spatial", per_task, False)
    with pytest.raises(ConfigError, match="folder without meta/info.json"):
        arm_overlap("pi", str(tmp_path), "libero_spatial", per_task, False)
    bad = tmp_path / "starts.jsonl"
    bad.write_text(json.dumps({"suite": "libero_spatial", "task_id": 0}) + "\n")
    with pytest.raises(ConfigError, match="line 1 is not a start-state record .*sim_state"):
        arm_overlap("pi", str(bad), "libero_spatial", per_task, False)
    bad.write_text("\n")
    with pytest.raises(ConfigError, match="holds no start states"):
        arm_overlap("pi", str(bad), "libero_spatial", per_task, False)
    unchecked = arm_overlap("pi", None, "libero_spatial", per_task, False)
    assert unchecked["checked"] is False and "no training data declared for arm pi" in unchecked["how"]
