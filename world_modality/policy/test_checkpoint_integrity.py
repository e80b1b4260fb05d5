"""A checkpoint's files are the ones saved: config.json's settings and the weight files are hashed at save
(policy.json) and checked at load; an evaluation folder's identity holds the checkpoint's settings."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from world_modality.config import ConfigError
from world_modality.evaluate.folder import check_same_evaluation, eval_identity
from world_modality.policy.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from world_modality.policy.test_model import make_batch, make_policy

FORMAT = {"format": "world-modality-checkpoint/1"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An E2 checkpoint with EMA weights, saved once; each test edits its own copy."""
    policy = make_policy("E2")
    ema = {"act_queries": policy.act_queries.detach().clone() + 0.01}
    return save_checkpoint(tmp_path_factory.mktemp("saved") / "ck", policy, step=5, ema=ema)


@pytest.fixture
def ck(saved, tmp_path):
    return Path(shutil.copytree(saved, tmp_path / "ck"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "section,field,value",
    [("world", "frame_stride", 2), ("data", "image_size", 64), ("world", "future_offset", 8)],
    ids=["frame-stride", "image-size", "future-offset"],
)
def test_an_edited_input_setting_is_refused_at_read_and_load(ck, section, field, value):
    """Settings the weights cannot tell (frame_stride, image_size on a backbone without position embeddings)
    once evaluated and scored offline with exit 0 after an edit."""
    _edit_json(ck / "config.json", lambda d: d[section].__setitem__(field, value))
    needle = (
        rf"checkpoint {ck}: {ck / 'config.json'} does not match the sha256 recorded in policy.json when the "
        r"checkpoint was saved \(a setting was edited since\); restore the config.json written with these weights"
    )
    for read in (read_checkpoint_config, load_checkpoint):
        with pytest.raises(CheckpointError, match=needle) as e:
            read(ck)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "field,value",
    [("control_steps_per_frame", 3), ("training_starts", {"kind": "indices", "indices": [0]})],
    ids=["control-steps", "training-starts"],
)
def test_an_edited_data_info_in_policy_json_is_refused_at_read_and_load(ck, field, value):
    """Actions held for another number of control steps, or training starts the held-out check would compare
    against, once ran from an edited policy.json with exit 0."""
    _edit_json(ck / "policy.json", lambda d: d["data_info"].__setitem__(field, value))
    needle = rf"checkpoint {ck}: {ck / 'policy.json'} does not match the sha256 it recorded when the checkpoint"
    for read in (read_checkpoint_config, load_checkpoint):
        with pytest.raises(CheckpointError, match=needle):
            read(ck)


def test_a_config_pointed_at_moved_data_and_reindented_still_loads(ck):
    data = json.loads((ck / "config.json").read_text())
    data["data"]["dataset"], data["world"]["latent_cache_dir"] = "/elsewhere/data", "/elsewhere/cache"
    (ck / "config.json").write_text(json.dumps(data, indent=4))
    assert load_checkpoint(ck).cfg.data.dataset == "/elsewhere/data"


def test_swapped_tensors_of_one_shape_are_refused_at_load(ck):
    """Two same-shape tensors swapped inside model.safetensors passed every shape check and acted."""
    tensors = load_file(str(ck / "model.safetensors"))
    a, b = (f"backbone.model.model.language_model.layers.0.self_attn.{p}_proj.weight" for p in ("q", "o"))
    assert tensors[a].shape == tensors[b].shape and not torch.equal(tensors[a], tensors[b])
    tensors[a], tensors[b] = tensors[b], tensors[a]
    save_file(tensors, str(ck / "model.safetensors"), metadata=FORMAT)
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint {ck}: model.safetensors does not match the sha256 recorded when it was saved "
        r"\(policy.json\); it was changed or replaced since. Restore the model.safetensors written",
    ):
        load_checkpoint(ck)


def test_changed_ema_weights_are_refused_unless_raw_weights_are_asked_for(ck):
    ema = load_file(str(ck / "ema.safetensors"))
    ema["act_queries"] = ema["act_queries"] * 2
    save_file(ema, str(ck / "ema.safetensors"), metadata=FORMAT)
    with pytest.raises(CheckpointError, match=r"ema.safetensors does not match the sha256 recorded"):
        load_checkpoint(ck)
    load_checkpoint(ck, weights="raw")  # the trained weights, which are as saved


def test_a_deleted_ema_file_is_refused_rather_than_loading_the_raw_weights_silently(ck):
    (ck / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"ema.safetensors is missing, but policy.json records it as saved"):
        load_checkpoint(ck)
    load_checkpoint(ck, weights="raw")


def test_an_edited_tokenizer_is_refused(ck):
    (ck / "tokenizer.json").write_text((ck / "tokenizer.json").read_text() + "\n")
    with pytest.raises(CheckpointError, match=r"tokenizer.json does not match the sha256 recorded"):
        load_checkpoint(ck)


def test_a_checkpoint_saved_before_hashes_were_recorded_loads_as_before(ck):
    _edit_json(ck / "policy.json", lambda d: d.pop("sha256"))
    reference = load_checkpoint(ck)
    tensors = load_file(str(ck / "model.safetensors"))
    save_file(tensors, str(ck / "model.safetensors"), metadata={**FORMAT, "rewritten": "yes"})
    _edit_json(ck / "config.json", lambda d: d["world"].__setitem__("frame_stride", 2))
    back = load_checkpoint(ck)
    assert back.cfg.world.frame_stride == 2
    batch = make_batch(reference)
    assert torch.equal(reference.predict_actions(batch), back.predict_actions(batch))


def test_a_malformed_hash_record_is_named(ck):
    _edit_json(ck / "policy.json", lambda d: d.__setitem__("sha256", {"model.safetensors": "abc"}))
    with pytest.raises(CheckpointError, match=r"policy.json: sha256 is .*; expected an object of file names"):
        read_checkpoint_config(ck)


def _settings(**over):
    base = dict(suite="libero_spatial", memory="predicted", seed=7, allow_train_overlap=False, render_profile="libero")
    return SimpleNamespace(**{**base, **over})


def _evaluated(ck: Path, out: Path) -> dict:
    """An evaluation folder as closed-loop evaluation leaves it: settings.json with the identity, one episode."""
    identity = eval_identity(ck, _settings(), 4, 220)
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"identity": identity}))
    (out / "episodes.jsonl").write_text(json.dumps({"task_id": 0, "init_index": 0, "success": True}) + "\n")
    return identity


@pytest.mark.parametrize(
    "file,edit,key",
    [
        ("config.json", lambda d: d["world"].__setitem__("frame_stride", 2), "config_sha256"),
        ("config.json", lambda d: d["data"].__setitem__("image_size", 64), "config_sha256"),
        ("policy.json", lambda d: d["data_info"].__setitem__("control_steps_per_frame", 2), "data_info_sha256"),
    ],
    ids=["frame-stride", "image-size", "control-steps"],
)
def test_a_rerun_after_an_edit_in_place_is_refused_with_the_field_named(ck, tmp_path, file, edit, key):
    """A checkpoint saved before hashes were recorded loads after an edit; its evaluation folder then took the
    rerun as the same evaluation and reported the old episodes, or merged old and new into one rate."""
    _edit_json(ck / "policy.json", lambda d: d.pop("sha256"))
    out = tmp_path / "eval"
    before = _evaluated(ck, out)
    check_same_evaluation(out, eval_identity(ck, _settings(), 4, 220), out / "episodes.jsonl")  # unchanged: resumes
    _edit_json(ck / file, edit)
    after = eval_identity(ck, _settings(), 4, 220)
    with pytest.raises(ConfigError, match=rf"holds episodes of another evaluation \({key}: '{before[key]}' there, "):
        check_same_evaluation(out, after, out / "episodes.jsonl")


def test_moving_the_dataset_keeps_the_evaluation_identity(ck, tmp_path):
    before = _evaluated(ck, tmp_path / "eval")
    _edit_json(ck / "config.json", lambda d: d["data"].__setitem__("dataset", "/moved/data"))
    _edit_json(ck / "policy.json", lambda d: d["data_info"].__setitem__("training_starts", {"kind": "none"}))
    assert eval_identity(ck, _settings(), 4, 220) == before


def test_a_folder_from_before_the_config_joined_the_identity_is_refused_and_says_so(ck, tmp_path):
    out = tmp_path / "eval"
    identity = _evaluated(ck, out)
    old = {k: v for k, v in identity.items() if k not in ("config_sha256", "data_info_sha256")}
    (out / "settings.json").write_text(json.dumps({"identity": old}))
    with pytest.raises(ConfigError, match=r"config_sha256: not recorded there, '[0-9a-f]{16}' now"):
        check_same_evaluation(out, identity, out / "episodes.jsonl")


def test_a_deleted_ema_file_changes_the_identity_and_the_refusal_says_which(ck, tmp_path):
    out = tmp_path / "eval"
    _evaluated(ck, out)
    (ck / "ema.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"ema_sha256: '[0-9a-f]{16}' there, not recorded now"):
        check_same_evaluation(out, eval_identity(ck, _settings(), 4, 220), out / "episodes.jsonl")
