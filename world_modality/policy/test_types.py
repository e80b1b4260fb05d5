import dataclasses

import numpy as np
import pytest
import torch

from world_modality.policy.backbone import build_tiny_qwen
from world_modality.policy.preprocess import ObservationPreprocessor
from world_modality.policy.tokenizer import build_tokenizer
from world_modality.policy.types import Batch, Observation

TASKS = ["move the block to the top left corner", "push it right"]


@pytest.fixture(scope="module")
def pre():
    return ObservationPreprocessor(build_tiny_qwen(build_tokenizer(TASKS)), ("cam",), 32, n_act_tokens=2)


def _obs(n=2, text=False):
    rng = np.random.default_rng(0)
    out = [
        {
            "cam": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=8),
            "task": TASKS[i % 2],
        }
        for i in range(n)
    ]
    if text:
        for i, o in enumerate(out):
            o["coc_text"] = "the block is left" if i == 0 else None
    return out


def test_preprocessor_gives_a_left_padded_batch(pre):
    b = pre(_obs())
    assert isinstance(b, Batch) and isinstance(b.act_end, int) and b.input_ids.shape[1] == b.act_end
    assert b.state.dtype == torch.float32 and b.images.shape == (2, 1, 3, 32, 32)
    # The two prompts differ in length: the shorter row is padded on the left, both end at act_end.
    assert not b.attention_mask[:, 0].all() and b.attention_mask[:, -1].all()
    assert b.text_ids is None and b.actions is None and b.z_t is None


def test_observation_objects_and_dicts_give_the_same_batch(pre):
    obs = _obs(text=True)
    as_dicts, as_objects = pre(obs), pre([Observation.from_sample(o, ("cam",)) for o in obs])
    for f in dataclasses.fields(Batch):
        a, b = getattr(as_dicts, f.name), getattr(as_objects, f.name)
        assert (a is None and b is None) or (torch.equal(a, b) if torch.is_tensor(a) else a == b), f.name
    assert as_dicts.text_mask[1].sum() == 0 and as_dicts.text_mask[0].sum() > 0  # None: an unannotated frame
    assert as_dicts.input_ids.shape[1] == as_dicts.act_end + as_dicts.text_ids.shape[1]


def test_observation_without_a_camera_names_it():
    with pytest.raises(KeyError, match="lacks camera 'wrist'"):
        Observation.from_sample(_obs()[0], ("cam", "wrist"))


def test_wrong_shape_names_the_field(pre):
    b = pre(_obs())
    with pytest.raises(ValueError, match=r"Batch\.state has shape \(3, 8\); expected 2 rows"):
        b.replace(state=torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"Batch\.z_t must have 2 dimensions"):
        b.replace(z_t=torch.zeros(2))
    with pytest.raises(ValueError, match=r"Batch\.action_mask"):
        b.replace(actions=torch.zeros(2, 4, 7))
    with pytest.raises(ValueError, match=r"Batch\.act_end"):
        b.replace(act_end=b.act_end - 1)
    with pytest.raises(ValueError, match=r"Batch\.text_ids and Batch\.text_mask"):
        b.replace(text_ids=torch.zeros(2, 0, dtype=torch.long))


def test_missing_required_field_names_it(pre):
    b = pre(_obs())
    with pytest.raises(ValueError, match=r"Batch\.images is required"):
        b.replace(images=None)
    fields = {f.name: getattr(b, f.name) for f in dataclasses.fields(Batch) if f.name != "state"}
    with pytest.raises(TypeError, match="state"):
        Batch(**fields)


def test_right_padded_prompt_is_refused(pre):
    b = pre(_obs())
    with pytest.raises(ValueError, match="not left-padded"):
        b.replace(attention_mask=b.attention_mask.flip(1))


def test_batch_is_frozen_and_replace_copies(pre):
    b = pre(_obs())
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.z_t = torch.zeros(2, 4)
    z = torch.ones(2, 4)
    c = b.replace(z_t=z)
    assert b.z_t is None and c.z_t is z and c.input_ids is b.input_ids


def test_to_moves_every_tensor_and_keeps_every_field(pre):
    frames = np.zeros((2, 3, 8, 8, 3), np.uint8)
    b = pre(_obs()).replace(z_t=torch.ones(2, 4), world_frames=frames)
    moved = b.to(torch.device("meta"))
    for f in dataclasses.fields(Batch):
        before, after = getattr(b, f.name), getattr(moved, f.name)
        if torch.is_tensor(before):
            assert after.device.type == "meta" and after.shape == before.shape and after.dtype == before.dtype, f.name
        else:
            assert after is before, f.name  # act_end, world_frames (numpy) and the absent fields unchanged
