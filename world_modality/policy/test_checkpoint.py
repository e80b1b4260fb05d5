import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from world_modality.policy.checkpoint import (CheckpointError, checkpoint_keys, load_checkpoint, read_checkpoint_config,
                                             save_checkpoint)
from world_modality.policy.test_model import make_batch, make_policy


@pytest.mark.parametrize("preset,lora", [("E2", True), ("E0", False), ("E2-Flow", False)])
def test_round_trip_reproduces_actions(tmp_path, preset, lora):
    policy = make_policy(preset, freeze_backbone=lora, use_lora=lora)
    path = save_checkpoint(tmp_path / "ck", policy, step=3)
    back = load_checkpoint(path)
    batch = make_batch(policy)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(policy.predict_actions(batch, generator=g1), back.predict_actions(batch, generator=g2))
    assert json.loads((path / "policy.json").read_text())["step"] == 3


def test_checkpoint_holds_lora_act_and_stats(tmp_path):
    policy = make_policy("E2", freeze_backbone=True, use_lora=True)
    keys = checkpoint_keys(policy)
    assert any(".lora_A." in k for k in keys) and "act_queries" in keys
    assert {"action_mean", "action_std", "state_mean", "prophet.latent_std", "prophet.delta_std"} <= set(keys)


def test_missing_lora_tensor_is_named(tmp_path):
    policy = make_policy("E2", freeze_backbone=True, use_lora=True)
    path = save_checkpoint(tmp_path / "ck", policy)
    tensors = load_file(str(path / "model.safetensors"))
    victim = sorted(k for k in tensors if ".lora_B." in k)[0]
    del tensors[victim]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=victim.replace(".", r"\.")):
        load_checkpoint(path)


def test_unexpected_tensor_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "ck", make_policy("E0"))
    tensors = load_file(str(path / "model.safetensors"))
    tensors["stray.weight"] = torch.zeros(2)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="stray.weight"):
        load_checkpoint(path)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "ck", make_policy("E0"))
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):  # evaluation's parent, before any worker starts
        read_checkpoint_config(path)


def test_checkpoint_of_another_preset_does_not_load_silently(tmp_path):
    e2 = save_checkpoint(tmp_path / "e2", make_policy("E2"))
    e0 = save_checkpoint(tmp_path / "e0", make_policy("E0"))
    (e0 / "model.safetensors").write_bytes((e2 / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        load_checkpoint(e0)


def test_only_this_machines_dead_writers_are_cleaned(tmp_path):
    import subprocess
    import sys

    from world_modality.policy.checkpoint import _writer_tag, remove_partial_checkpoints

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    host = _writer_tag().rsplit("-", 1)[0]
    mine_dead = tmp_path / f".tmp-step-00000002-{host}-{dead_pid}"
    mine_alive = tmp_path / f".tmp-step-00000003-{_writer_tag()}"
    other_host = tmp_path / f".tmp-step-00000004-otherhost{host}-{dead_pid}"
    for d in (mine_dead, mine_alive, other_host):
        d.mkdir()
    assert remove_partial_checkpoints(tmp_path) == [mine_dead]
    assert mine_alive.exists() and other_host.exists()
