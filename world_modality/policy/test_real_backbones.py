"""The real-backbone path (`backbone_path`) exercised on tiny random models saved the way hub
checkpoints are (config.json + safetensors + tokenizer with its chat template), and tiny-smolvlm."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from world_modality.config import ConfigError, build_config
from world_modality.policy.backbone import build_tiny_qwen
from world_modality.policy.checkpoint import CheckpointError, checkpoint_keys, load_checkpoint, save_checkpoint
from world_modality.policy.factory import build_policy, build_preprocessor
from world_modality.policy.lora import matching_modules
from world_modality.policy.model import PolicyShapes
from world_modality.policy.preprocess import ObservationPreprocessor
from world_modality.policy.prompt import build_prompt, question
from world_modality.policy.smolvlm import SMOLVLM_SPECIAL_TOKENS, build_tiny_smolvlm
from world_modality.policy.test_model import make_batch as model_batch
from world_modality.policy.tokenizer import SPECIAL_TOKENS, build_tokenizer

TASKS = ["pick up the black bowl and place it on the plate", "open the top drawer"]
LATENT = 16
# Qwen2.5-VL's chat template as its checkpoints ship it.
QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or "
    "'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' "
    "or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
QWEN_SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def save_tiny_pretrained(folder, family, smolvlm_class="SmolVLMForConditionalGeneration", vision_size=64):
    """A tiny random model folder laid out like a hub checkpoint; returns the folder."""
    from transformers import PreTrainedTokenizerFast

    tok = build_tokenizer(TASKS)
    if family == "qwen2.5-vl":
        bb = build_tiny_qwen(tok, seed=1)
        model, template = bb.model, QWEN_TEMPLATE
        special = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=SPECIAL_TOKENS)
    else:
        import transformers
        from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

        bb = build_tiny_smolvlm(tok, vision_size, seed=1)
        cls = getattr(transformers, smolvlm_class)
        cfg_cls = cls.config_class
        fields = {k: v for k, v in bb.model.config.to_dict().items() if k not in ("model_type", "architectures")}
        model = cls(cfg_cls(**fields))
        model.load_state_dict(bb.model.state_dict())
        template = DEFAULT_CHAT_TEMPLATE
        special = dict(
            bos_token="<|im_start|>",
            eos_token="<end_of_utterance>",
            pad_token="<|im_end|>",
            extra_special_tokens=SPECIAL_TOKENS + SMOLVLM_SPECIAL_TOKENS,
        )
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=bb.tokenizer, chat_template=template, **special).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_tiny_pretrained(tmp_path_factory.mktemp("qwen"), "qwen2.5-vl")


@pytest.fixture(scope="module")
def smolvlm_dir(tmp_path_factory):
    return save_tiny_pretrained(tmp_path_factory.mktemp("smolvlm"), "smolvlm", "Idefics3ForConditionalGeneration")


def make_policy(image_size=32, preset="E2", **overrides):
    cfg = build_config({"image_size": image_size, "world_image_size": 32, **overrides}, preset=preset)
    torch.manual_seed(0)
    tok = build_tokenizer(TASKS) if cfg.policy.backbone.startswith("tiny-") else None
    policy = build_policy(cfg, PolicyShapes(8, 7, LATENT), tokenizer=tok)
    rng = np.random.default_rng(0)
    policy.set_stats(
        np.zeros(8),
        np.ones(8),
        np.zeros(7),
        np.ones(7),
        latent_mean=rng.normal(size=LATENT),
        latent_std=np.ones(LATENT),
        delta_std=np.full(LATENT, 0.5),
    )
    return policy


def make_batch(policy, n=2, seed=0):
    return model_batch(policy, n=n, seed=seed, tasks=TASKS)


def train_step(policy, batch):
    policy.train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    loss = policy.losses(batch)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad()
    return policy.eval(), float(loss.detach())


# -- one prompt builder, each family's chat format ---------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2.5-vl", "smolvlm"])
def test_prompt_is_the_chat_template_of_the_saved_tokenizer(family, qwen_dir, smolvlm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_dir if family == "qwen2.5-vl" else smolvlm_dir, local_files_only=True)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": question(TASKS[0])}],
        }
    ]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ours = build_prompt(TASKS[0], 2, family)
    # Qwen's template adds a default system turn when none is given; the prompt leaves it out.
    assert rendered == (QWEN_SYSTEM_TURN + ours if family == "qwen2.5-vl" else ours)
    with pytest.raises(ValueError, match="no chat format"):
        build_prompt(TASKS[0], 2, "llava")


def test_smolvlm_prompt_ids_and_pixels_match_idefics3_processor(smolvlm_dir):
    """Token ids (chat template + image expansion) and pixel values equal the transformers processor's
    with `do_image_splitting=False`, at an image size that needs no resize."""
    from transformers import AutoTokenizer, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    bb = build_policy(
        build_config({"backbone": "smolvlm", "backbone_path": str(smolvlm_dir), "image_size": 64}, preset="E0"),
        PolicyShapes(8, 7, LATENT),
    ).backbone
    tok = AutoTokenizer.from_pretrained(smolvlm_dir, local_files_only=True)
    images = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 64}, max_image_size={"longest_edge": 64}
    )
    proc = Idefics3Processor(
        image_processor=images, tokenizer=tok, image_seq_len=bb.image_seq_len, chat_template=tok.chat_template
    )
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": question(TASKS[1])}],
        }
    ]
    ref = proc(
        text=[proc.apply_chat_template(messages, add_generation_prompt=True)],
        images=[[Image.fromarray(i) for i in imgs]],
        return_tensors="pt",
    )
    pre = ObservationPreprocessor(bb, ("a", "b"), 64, n_act_tokens=2)
    assert pre.prompt_ids(TASKS[1]) == ref["input_ids"][0].tolist()
    ours = bb.pixel_inputs(torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in imgs]))
    torch.testing.assert_close(ours, ref["pixel_values"][0], atol=1e-6, rtol=0)


def test_smolvlm_forward_equals_the_model_own_forward():
    """The backbone's forward (encoder + connector called directly, image features scattered by id)
    gives the hidden states of SmolVLMModel.forward on the same left-padded batch."""
    bb = build_tiny_smolvlm(build_tokenizer(TASKS), 64).eval()
    pre = ObservationPreprocessor(bb, ("a", "b"), 64, n_act_tokens=2)
    toks = pre.tokens(TASKS)
    images = torch.rand(2, 2, 3, 64, 64)
    with torch.no_grad():
        ours = bb(
            toks["input_ids"], bb.embed(toks["input_ids"]), toks["attention_mask"], toks["mm_token_type_ids"], images
        )
        pos = (toks["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        ref = bb.model.model(
            input_ids=toks["input_ids"],
            attention_mask=toks["attention_mask"],
            position_ids=pos,
            pixel_values=bb.pixel_inputs(images.flatten(0, 1)).view(2, 2, 3, 64, 64),
            use_cache=False,
        )
    m = toks["attention_mask"].bool()
    torch.testing.assert_close(ours[m], ref.last_hidden_state[m], atol=1e-5, rtol=1e-5)


# -- real path: build, LoRA, forward, train step, checkpoint round trip -------------------------------
@pytest.mark.parametrize("family,image_size", [("qwen2.5-vl", 32), ("smolvlm", 32)])
def test_backbone_path_lora_train_and_checkpoint_round_trip(tmp_path, family, image_size, qwen_dir, smolvlm_dir):
    folder = qwen_dir if family == "qwen2.5-vl" else smolvlm_dir  # SmolVLM's encoder takes 64 px: images are upscaled
    policy = make_policy(image_size, backbone=family, backbone_path=str(folder), freeze_backbone=True, use_lora=True)
    bb = policy.backbone
    assert bb.pretrained and bb.family == family
    lm = "language_model" if family == "qwen2.5-vl" else "text_model"
    lora = [n for n, _ in bb.model.named_modules() if n.endswith(".lora_A")]
    assert lora and all(lm in n for n in lora)  # the family's default target: text attention only
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    assert trainable and all(".lora_" in n for n in trainable)

    batch = make_batch(policy)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if ".lora_B." in n}
    policy, loss = train_step(policy, batch)
    assert np.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in policy.named_parameters() if n in before)

    path = save_checkpoint(tmp_path / "ck", policy, step=1)
    stored = load_file(str(path / "model.safetensors"))
    assert set(stored) == set(checkpoint_keys(policy))
    assert any(".lora_B." in k for k in stored) and "act_queries" in stored
    assert not any(k.startswith("backbone.") and ".lora_" not in k for k in stored)  # base weights reload from the path
    back = load_checkpoint(path)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(policy.predict_actions(batch, generator=g1), back.predict_actions(batch, generator=g2))


def test_frozen_backbone_of_another_revision_is_refused_at_load(tmp_path, qwen_dir):
    policy = make_policy(32, backbone="qwen2.5-vl", backbone_path=str(qwen_dir), freeze_backbone=True, use_lora=True)
    path = save_checkpoint(tmp_path / "ck", policy, step=1)
    assert json.loads((path / "policy.json").read_text())["frozen_backbone_fingerprint"]
    # Same architecture and tokenizer, one tensor nudged: what another revision in a hub cache looks like.
    other = Path(shutil.copytree(qwen_dir, tmp_path / "other"))
    weights = load_file(str(other / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["policy"]["backbone_path"] = str(other)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="frozen backbone loaded from .*other.* has weights fingerprint"):
        load_checkpoint(path)


def test_smolvlm2_class_loads_too(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "smolvlm2", "smolvlm", "SmolVLMForConditionalGeneration")
    policy = make_policy(
        64, preset="E0", backbone="smolvlm", backbone_path=str(folder), freeze_backbone=True, use_lora=True
    )
    assert type(policy.backbone.model).__name__ == "SmolVLMForConditionalGeneration"
    assert policy.predict_actions(make_batch(policy)).isfinite().all()


def test_folder_of_another_family_is_refused(qwen_dir, tmp_path):
    with pytest.raises(ValueError, match="qwen2_5_vl.*expected model_type"):
        make_policy(32, backbone="smolvlm", backbone_path=str(qwen_dir))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        make_policy(32, backbone="qwen2.5-vl", backbone_path=str(tmp_path / "absent"))


def test_lora_target_matching_nothing_is_an_error(smolvlm_dir):
    with pytest.raises(ValueError, match="matches no Linear"):
        make_policy(
            32,
            backbone="smolvlm",
            backbone_path=str(smolvlm_dir),
            use_lora=True,
            lora_target=r".*language_model.*\.(q_proj|v_proj)$",
        )  # Qwen's module names


# -- tiny-smolvlm --------------------------------------------------------------------------------
def test_tiny_smolvlm_trains_and_round_trips(tmp_path):
    policy = make_policy(64, backbone="tiny-smolvlm", freeze_backbone=True, use_lora=True)
    bb = policy.backbone
    lora = [n for n, _ in bb.model.named_modules() if n.endswith(".lora_A")]
    assert lora and all(".text_model." in n and "self_attn" in n for n in lora)
    assert matching_modules(bb.model, r".*vision_model.*\.(q_proj|k_proj|v_proj|out_proj)$")  # left without adapters
    batch = make_batch(policy)
    block = bb.image_block(bb.image_seq_len)
    assert len(block) == bb.image_seq_len + 3 == 4 + 3  # (64/16)^2 / 2^2 image tokens + fake, global, fake
    assert int((batch.input_ids == bb.image_token_id).sum()) == 2 * 2 * bb.image_seq_len
    policy, loss = train_step(policy, batch)
    assert np.isfinite(loss)
    back = load_checkpoint(save_checkpoint(tmp_path / "ck", policy))
    assert back.backbone.tokenizer.get_vocab_size() == bb.tokenizer.get_vocab_size()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(policy.predict_actions(batch, generator=g1), back.predict_actions(batch, generator=g2))


def test_tiny_smolvlm_text_loss_ends_with_end_of_utterance():
    policy = make_policy(64, preset="E4", backbone="tiny-smolvlm", coc_jsonl="coc.jsonl")
    pre = build_preprocessor(policy.cfg, policy)
    assert pre.text_ids("the arm moves left")[-1] == policy.backbone.token_id("<end_of_utterance>")


def test_bfloat16_backbone_acts():
    policy = make_policy(
        64, preset="E0", backbone="tiny-smolvlm", backbone_dtype="bfloat16", use_lora=True, freeze_backbone=True
    )
    assert policy.backbone.dtype == torch.bfloat16
    batch = make_batch(policy)
    policy, loss = train_step(policy, batch)
    assert np.isfinite(loss) and policy.predict_actions(batch).dtype == torch.float32


# -- config ------------------------------------------------------------------------------------
def test_backbone_choices_and_family_defaults():
    with pytest.raises(ConfigError, match=r"`backbone` must be one of .*'tiny-smolvlm'.*got 'llava'"):
        build_config({"backbone": "llava"})
    with pytest.raises(ConfigError, match="backbone_path"):
        build_config({"backbone": "smolvlm"})
    with pytest.raises(ConfigError, match="backbone_dtype.*'fp8'"):
        build_config({"backbone_dtype": "fp8"})
    assert "text_model" in build_config({"backbone": "tiny-smolvlm"}).policy.resolved_lora_target()
    assert "language_model" in build_config({}).policy.resolved_lora_target()
    assert build_config({"lora_target": r".*q_proj$"}).policy.resolved_lora_target() == r".*q_proj$"


def test_tied_embeddings_of_a_trained_backbone_are_saved(tmp_path):
    policy = make_policy(64, preset="E0", backbone="tiny-smolvlm")
    m = policy.backbone.model
    m.lm_head.weight = m.model.text_model.embed_tokens.weight  # as checkpoints with tie_word_embeddings have it
    back = load_checkpoint(save_checkpoint(tmp_path / "ck", policy))
    torch.testing.assert_close(back.backbone.model.lm_head.weight, m.lm_head.weight)


@pytest.mark.slow
def test_training_loop_runs_tiny_smolvlm(fixture_dataset, tmp_path):
    from conftest import tiny_config
    from world_modality.analysis.offline import evaluate_offline
    from world_modality.train import train

    cfg = tiny_config(
        fixture_dataset, tmp_path / "run", max_epochs=1, backbone="tiny-smolvlm", freeze_backbone=True, use_lora=True
    )
    ckpt = train(cfg, progress=False)
    policy = load_checkpoint(ckpt)
    assert policy.backbone.family == "smolvlm" and any(".lora_A." in k for k in checkpoint_keys(policy))
    assert np.isfinite(evaluate_offline(ckpt)["action_mse"]["predicted"])


@pytest.mark.slow
def test_image_size_a_saved_qwen_cannot_patch_fails_before_any_cache(qwen_dir, tmp_path, monkeypatch):
    from conftest import tiny_config
    from world_modality.data.fixture import make_fixture_dataset
    from world_modality.train import train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    data = make_fixture_dataset(tmp_path / "data", n_episodes=3, length=8, image_size=32, n_tasks=2, seed=0)
    cfg = tiny_config(data, tmp_path / "run", image_size=48, backbone="qwen2.5-vl", backbone_path=str(qwen_dir))
    with pytest.raises(
        ValueError, match=r"image_size 48 must be a multiple of patch_size\*merge_size = 32 for qwen2.5-vl"
    ):
        train(cfg, progress=False)
    # Nothing decoded or encoded: no frame cache, no latent cache, in either place caches go.
    assert not (data / ".cache").exists() and not (tmp_path / "user-cache").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
