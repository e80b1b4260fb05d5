import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from world_modality.policy.checkpoint import (
    CheckpointError,
    checkpoint_keys,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
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
    needle = r"config.json `disable_future_injection` is True, but model.safetensors holds future-injection tensors"
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(e0)
    with pytest.raises(CheckpointError, match=needle):
        read_checkpoint_config(e0)


def test_only_this_machines_dead_writers_are_cleaned(tmp_path):
    import subprocess
    import sys

    from world_modality.policy.checkpoint_store import remove_partial_checkpoints, writer_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    host = writer_tag().rsplit("-", 1)[0]
    mine_dead = tmp_path / f".tmp-step-00000002-{host}-{dead_pid}"
    mine_alive = tmp_path / f".tmp-step-00000003-{writer_tag()}"
    other_host = tmp_path / f".tmp-step-00000004-otherhost{host}-{dead_pid}"
    for d in (mine_dead, mine_alive, other_host):
        d.mkdir()
    assert remove_partial_checkpoints(tmp_path) == [mine_dead]
    assert mine_alive.exists() and other_host.exists()


def _edited_copy(checkpoint, tmp_path, section, field, value, file="config.json"):
    """A copy of a trained checkpoint with one field of config.json (or policy.json) changed."""
    import shutil

    ck = Path(shutil.copytree(checkpoint, tmp_path / "ck"))
    data = json.loads((ck / file).read_text())
    (data[section] if section else data)[field] = value
    (ck / file).write_text(json.dumps(data))
    return ck


@pytest.mark.slow
@pytest.mark.parametrize(
    "section,field,value,needle",
    [
        (
            "world",
            "latent_suffix",
            "m2",
            r"`latent_suffix` is 'm2', but policy.json records a world encoder of m=4 frames",
        ),
        ("policy", "chunk_size", 4, r"`chunk_size` is 4, but the action head .* predicts chunks of 8 actions"),
        (
            "world",
            "world_image_size",
            64,
            r"`world_image_size` is 64, but policy.json records a world encoder of 32-px",
        ),
        ("policy", "n_act_tokens", 2, r"`n_act_tokens` is 2, but act_queries in model.safetensors has shape \[4, "),
        ("policy", "action_head", "flow", r"`action_head` is 'flow', but model.safetensors holds a mse head"),
        ("policy", "use_lora", True, r"`use_lora` is True, but model.safetensors has no LoRA tensors"),
        ("policy", "n_memory_tokens", 8, r"`n_memory_tokens` is 8, but memory_pos"),
        ("world", "prophet_hidden", 128, r"`prophet_hidden` is 128, but prophet.mlp.0.weight has shape \[256, "),
        ("world", "world_encoder_path", "/models/vjepa2", r"`world_encoder_path` is '/models/vjepa2'"),
    ],
    ids=[
        "latent-suffix",
        "chunk-size",
        "world-image-size",
        "act-tokens",
        "action-head",
        "lora",
        "memory-tokens",
        "prophet-hidden",
        "encoder-path",
    ],
)
def test_an_edited_config_is_refused_at_read_before_any_episode(trained_e2, tmp_path, section, field, value, needle):
    """m4 trained, config edited to m2: the policy loaded (the encoder is rebuilt from policy.json) and every
    closed-loop episode raised. Evaluation's parent reads only the config: the mismatch is found there."""
    if field == "world_encoder_path":
        ck = _edited_copy(trained_e2, tmp_path, "world", "world_encoder", "vjepa2")
        data = json.loads((ck / "config.json").read_text())
        data["world"]["world_encoder"], data["world"][field] = "tiny-vjepa2", value
        (ck / "config.json").write_text(json.dumps(data))
    else:
        ck = _edited_copy(trained_e2, tmp_path, section, field, value)
    with pytest.raises(CheckpointError, match=needle) as e:
        read_checkpoint_config(ck)
    assert str(ck) in str(e.value) and "Restore the config.json written with these weights" in str(e.value)
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(ck)


@pytest.mark.slow
@pytest.mark.parametrize(
    "section,field,value,needle",
    [
        (
            "shapes",
            "latent_dim",
            32,
            r"policy.json shapes.latent_dim is 32, but memory_proj.weight has shape \[512, 64\]",
        ),
        ("shapes", "action_dim", 6, r"policy.json shapes.action_dim is 6, but action_mean .* has shape \[7\]"),
        ("world_encoder", "num_frames", 2, r"`latent_suffix` is 'm4', but policy.json records a world encoder of m=2"),
        ("shapes", "state_dim", "8", r"shapes is .*; expected integers"),
    ],
    ids=["latent-dim", "action-dim", "encoder-frames", "shape-type"],
)
def test_an_edited_policy_json_is_refused_at_read(trained_e2, tmp_path, section, field, value, needle):
    ck = _edited_copy(trained_e2, tmp_path, section, field, value, file="policy.json")
    with pytest.raises(CheckpointError, match=needle):
        read_checkpoint_config(ck)


@pytest.mark.slow
def test_the_trained_checkpoint_itself_holds_together(trained_e2):
    assert read_checkpoint_config(trained_e2).world.latent_suffix == "m4"


@pytest.mark.parametrize("name", ["policy.json", "config.json"])
def test_a_checkpoint_json_that_is_not_json_names_the_file(tmp_path, name):
    from world_modality.config import ConfigError

    path = save_checkpoint(tmp_path / "ck", make_policy("E0"))
    (path / name).write_text('{"format": "world-modality-checkpoint/1", "shapes": {')
    for read in (read_checkpoint_config, load_checkpoint):
        with pytest.raises((CheckpointError, ConfigError), match=rf"{path / name} is not valid JSON \(.*\); expected"):
            read(path)


def test_a_checkpoint_with_nonfinite_weights_is_never_written(tmp_path):
    policy = make_policy("E0")
    with torch.no_grad():
        policy.act_queries[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to write checkpoint .*ck: tensors \['act_queries'\] hold NaN"):
        save_checkpoint(tmp_path / "ck", policy)
    assert not (tmp_path / "ck").exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_checkpoint_holding_nonfinite_weights_does_not_load(tmp_path):
    """One written before training stopped at NaN (or damaged since) acted NaN in every closed-loop episode."""
    path = save_checkpoint(tmp_path / "ck", make_policy("E0"))
    tensors = load_file(str(path / "model.safetensors"))
    tensors["state_proj.weight"][0, 0] = float("inf")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "world-modality-checkpoint/1"})
    with pytest.raises(CheckpointError, match=r"holds NaN/inf values in tensors \['state_proj.weight'\]"):
        load_checkpoint(path)


def test_a_tiny_checkpoint_without_its_tokenizer_is_named_at_read(tmp_path):
    path = save_checkpoint(tmp_path / "ck", make_policy("E0"))
    (path / "tokenizer.json").unlink()
    for read in (read_checkpoint_config, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"ck has no tokenizer.json; expected the tokenizer the tiny-qwen"):
            read(path)
