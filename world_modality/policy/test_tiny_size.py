"""`tiny_width` / `tiny_depth`: the tiny Qwen's size as training settings, the default unchanged."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_config
from world_modality.config import ConfigError, build_config
from world_modality.config.flags import parse_train_args
from world_modality.policy.backbone import TinyQwenSize, build_tiny_qwen
from world_modality.policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from world_modality.policy.factory import build_backbone, build_preprocessor
from world_modality.policy.tokenizer import build_tokenizer

TASKS = ["pick up the black bowl and place it on the plate", "open the top drawer"]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def text_config(backbone):
    return backbone.model.config.text_config


def test_default_config_builds_todays_model():
    """No tiny_* setting, or the defaults spelled out, give the embedded model: same size, same weights."""
    tok = build_tokenizer(TASKS)
    today = build_tiny_qwen(tok, seed=0, size=TinyQwenSize())
    for overrides in ({}, {"tiny_width": 128, "tiny_depth": 2}):
        built = build_backbone(build_config({"seed": 0, **overrides}), tok)
        assert n_params(built) == n_params(today)
        assert (text_config(built).hidden_size, text_config(built).num_hidden_layers) == (128, 2)
        theirs = built.model.state_dict()
        assert theirs.keys() == today.model.state_dict().keys()
        assert all(torch.equal(v, theirs[k]) for k, v in today.model.state_dict().items())


def test_smaller_size_is_what_was_asked():
    tok = build_tokenizer(TASKS)
    small = build_backbone(build_config({"tiny_width": 64, "tiny_depth": 1}), tok)
    tc = text_config(small)
    assert (tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers) == (64, 128, 1)
    assert small.hidden_size == 64
    assert n_params(small) < n_params(build_backbone(build_config({}), tok))


def test_flags_set_the_size():
    cfg = parse_train_args(["--tiny_width", "64", "--tiny_depth", "1"])
    assert (cfg.policy.tiny_width, cfg.policy.tiny_depth) == (64, 1)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"tiny_width": 0}, r"`tiny_width` must be a positive multiple of 16, got 0"),
        ({"tiny_width": -16}, r"`tiny_width` must be a positive multiple of 16, got -16"),
        ({"tiny_width": 100}, r"multiple of 16, got 100.*\(tiny_width / 4\) must then be a multiple of 4"),
        ({"tiny_width": 64.0}, r"`tiny_width` must be a positive multiple of 16, got 64\.0"),
        ({"tiny_depth": 0}, r"`tiny_depth` .* must be an integer >= 1, got 0"),
        (
            {"backbone": "tiny-smolvlm", "tiny_width": 64},
            r"backbone only: got `tiny_width` 64 with `backbone` 'tiny-smolvlm'.*default tiny_width=128",
        ),
        (
            {"backbone": "qwen2.5-vl", "backbone_path": "/nowhere", "tiny_depth": 3},
            r"tiny-qwen2.5-vl backbone only: got `tiny_depth` 3 with `backbone` 'qwen2.5-vl'.*default tiny_depth=2",
        ),
    ],
    ids=[
        "width-0",
        "width-negative",
        "width-100",
        "width-float",
        "depth-0",
        "width-on-tiny-smolvlm",
        "depth-on-qwen2.5-vl",
    ],
)
def test_bad_sizes_are_refused_naming_the_value(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(overrides)


def test_other_backbones_accept_the_defaults():
    cfg = build_config({"backbone": "tiny-smolvlm", "tiny_width": 128, "tiny_depth": 2})
    assert cfg.policy.backbone == "tiny-smolvlm"


@pytest.fixture(scope="module")
def small_run(fixture_dataset, tmp_path_factory):
    """One epoch of a 64-wide, 1-layer tiny Qwen on the fixture dataset."""
    from world_modality.train import train

    cfg = tiny_config(
        fixture_dataset, tmp_path_factory.mktemp("tiny_size") / "run", max_epochs=1, tiny_width=64, tiny_depth=1
    )
    return cfg, train(cfg, progress=False)


def make_batch(policy, n=4, seed=0):
    """Random observations through the policy's own preprocessor, latents sized to its world encoder."""
    rng = np.random.default_rng(seed)
    s, size = policy.shapes, policy.cfg.data.image_size
    obs = []
    for i in range(n):
        o = {k: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for k in policy.cfg.data.image_keys}
        o["observation.state"] = rng.normal(size=s.state_dim).astype(np.float32)
        o["task"] = TASKS[i % len(TASKS)]
        obs.append(o)
    batch = build_preprocessor(policy.cfg, policy)(obs)
    return batch.replace(z_t=torch.as_tensor(rng.normal(size=(n, s.latent_dim)), dtype=torch.float32))


def predict(policy, batch):
    with torch.no_grad():
        return policy.predict_actions(batch, generator=torch.Generator().manual_seed(0))


def test_smaller_model_trains_and_reloads_at_its_size(small_run, tmp_path):
    cfg, ckpt = small_run
    policy = load_checkpoint(ckpt).eval()  # strict: a tensor of another size or layer count is an error
    tc = text_config(policy.backbone)
    assert (tc.hidden_size, tc.num_hidden_layers) == (64, 1)
    assert (policy.cfg.policy.tiny_width, policy.cfg.policy.tiny_depth) == (64, 1)
    batch = make_batch(policy)
    actions = predict(policy, batch)
    # Saved again and reloaded: the config carries the size, so the same model comes back.
    again = load_checkpoint(save_checkpoint(tmp_path / "again", policy, step=1)).eval()
    assert torch.equal(actions, predict(again, batch))
    # The trained weights, not a fresh init of the same size, are what came back.
    fresh = build_backbone(cfg, policy.backbone.tokenizer)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.model.parameters(), policy.backbone.model.parameters()))


def test_edited_size_in_config_json_is_refused(small_run, tmp_path):
    """A config.json whose size was edited after saving would build another model around the weights."""
    _, ckpt = small_run
    copy = shutil.copytree(ckpt, tmp_path / "edited")
    config = json.loads((copy / "config.json").read_text())
    config["policy"]["tiny_width"] = 128
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json does not match the sha256 recorded.*edited"):
        load_checkpoint(copy)
