import numpy as np
import pytest
import torch

from world_modality.policy.backbone import build_tiny_qwen
from world_modality.policy.lora import apply_lora, matching_modules, set_trainable
from world_modality.policy.preprocess import ObservationPreprocessor
from world_modality.policy.prompt import build_prompt
from world_modality.policy.tokenizer import build_tokenizer

TASKS = ["pick up the black bowl and place it on the plate", "open the top drawer"]


@pytest.fixture(scope="module")
def backbone():
    return build_tiny_qwen(build_tokenizer(TASKS))


def test_patchify_matches_qwen_image_processor(backbone):
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil(
        patch_size=backbone.patch_size, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32, max_pixels=512 * 512
    )
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    ref = proc(images=[Image.fromarray(img)], return_tensors="np")
    ours, grid = backbone.pixel_inputs(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    np.testing.assert_allclose(ours.numpy(), ref["pixel_values"], atol=1e-5)


def test_prompt_has_one_vision_block_per_camera_and_the_instruction():
    p = build_prompt("open the drawer", 2)
    assert p.count("<|image_pad|>") == 2 and "open the drawer" in p
    with pytest.raises(ValueError, match="empty"):
        build_prompt("   ", 2)


def test_preprocessor_layout(backbone):
    pre = ObservationPreprocessor(backbone, ("cam",), 32, n_act_tokens=3)
    obs = [{"cam": np.zeros((64, 64, 3), np.uint8), "observation.state": np.zeros(8), "task": t} for t in TASKS]
    b = pre(obs)
    assert b.images.shape == (2, 1, 3, 32, 32)  # resized to image_size
    assert (b.mm_token_type_ids.sum(1) == pre.tokens_per_image).all()
    assert (b.attention_mask[:, -4:] == 1).all()  # state + ACT slots are the last tokens of every row
    assert b.attention_mask[1].sum() < b.attention_mask[0].sum()  # shorter prompt is left-padded
    with pytest.raises(KeyError, match="cam"):
        pre([{"other": np.zeros((32, 32, 3), np.uint8), "observation.state": np.zeros(8), "task": "x"}])
    with pytest.raises(ValueError, match="multiple"):
        ObservationPreprocessor(backbone, ("cam",), 40, n_act_tokens=3)


def test_lora_pattern_must_match(backbone):
    with pytest.raises(ValueError, match="matches no Linear"):
        apply_lora(backbone.model, r".*language_model.*\.qkv_proj$", 4, 8)


def test_lora_targets_language_attention_only():
    bb = build_tiny_qwen(build_tokenizer(TASKS))
    names = apply_lora(bb.model, r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)$", 4, 8)
    assert names and all("language_model" in n for n in names)
    assert not matching_modules(bb.model, r".*visual.*\.(q_proj|k_proj|v_proj|o_proj)$")
    holder = torch.nn.Module()
    holder.backbone = bb
    holder.head = torch.nn.Linear(2, 2)
    set_trainable(holder, freeze_backbone=True)
    trainable = {n for n, p in holder.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable
    assert all(".lora_" in n for n in trainable if n.startswith("backbone."))
    assert sum(".lora_" in n for n in trainable) == 2 * len(names)


def test_preprocessor_resizes_with_the_shared_uint8_op(backbone):
    """Observations of another size go through data/frames.py's resize, the one that made the training frames."""
    from world_modality.images import resize_frames

    pre = ObservationPreprocessor(backbone, ("cam",), 32, n_act_tokens=2)
    img = np.random.default_rng(0).integers(0, 256, (2, 56, 72, 3), dtype=np.uint8)
    obs = [{"cam": im, "observation.state": np.zeros(8), "task": t} for im, t in zip(img, TASKS)]
    want = torch.from_numpy(resize_frames(img, 32)).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(pre(obs).images[:, 0], want)
    same = [{**o, "cam": resize_frames(o["cam"], 32)} for o in obs]
    assert torch.equal(pre(same).images, pre(obs).images)
