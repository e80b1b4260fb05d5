"""Tests for the pretrained V-JEPA 2 path: a tiny VJEPA2Model saved with save_pretrained and loaded
through the real code path (config -> latent cache -> policy checkpoint), and the checkpoint's own
video preprocessing reproduced without torchvision."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from world_modality.world.encoder import WorldEncoder, build_world_encoder
from world_modality.world.vjepa2_loading import tiny_vjepa2_config
from world_modality.world.vjepa2_processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VJEPA2Processing,
    read_processing,
    resize_output_size,
)

CROP = 32  # the saved model's crop_size; its processor resizes the shortest edge to int(32*256/224) = 36


def _save_tiny(path, hidden_size=64, crop=CROP, seed=0):
    from transformers import VJEPA2Model

    cfg = tiny_vjepa2_config(4, crop)
    cfg.hidden_size = hidden_size
    torch.manual_seed(seed)
    VJEPA2Model(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("vjepa2") / "tiny-vjepa2-pretrained")


def _reference(frame: np.ndarray, shortest_edge: int, crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """The processor's steps, written with PIL and numpy: bilinear resize of the shortest edge
    (PIL antialiases when shrinking), center crop at int((size - crop) / 2), x/255, (x - mean) / std."""
    h, w = frame.shape[:2]
    nh, nw = resize_output_size(h, w, shortest_edge)
    img = Image.fromarray(frame).resize((nw, nh), Image.BILINEAR)
    top, left = int((nh - crop) / 2.0), int((nw - crop) / 2.0)
    x = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float64) / 255.0
    return ((x - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)


def test_resize_output_size_follows_transformers():
    assert resize_output_size(256, 256, 292) == (292, 292)
    assert resize_output_size(480, 640, 292) == (292, 389)  # int(292 * 640 / 480) = 389
    assert resize_output_size(640, 480, 292) == (389, 292)


def test_processing_defaults_follow_crop_size():
    p = VJEPA2Processing.for_crop(256)
    assert (p.crop_size, p.shortest_edge) == (256, 292)
    assert VJEPA2Processing.for_crop(384).shortest_edge == 438  # ViT-g 384 checkpoints


@pytest.mark.parametrize("hw", [(48, 48), (40, 56), (128, 96), (24, 24)])
def test_preprocess_matches_pil_reference(model_dir, hw):
    enc = build_world_encoder(name="vjepa2", num_frames=4, pretrained_path=model_dir)
    assert enc.processing == VJEPA2Processing.for_crop(CROP)
    rng = np.random.default_rng(hw[0])
    # Smooth images plus noise: resampling differences show on edges as well as flat areas.
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) * 127 / (h + w))], -1)
    frames = np.clip(base[None, None] + rng.normal(0, 40, (2, 4, h, w, 3)), 0, 255).astype(np.uint8)
    x = enc.preprocess(frames).double().numpy()
    assert x.shape == (2, 4, 3, CROP, CROP)
    ref = np.stack([[_reference(f, 36, CROP) for f in clip] for clip in frames])
    err = np.abs(x - ref) * np.asarray(IMAGENET_STD).reshape(3, 1, 1) * 255  # in uint8 levels
    # torch's uint8 antialiased kernel follows PIL's fixed-point filter; the two passes' intermediate
    # rounding differs on a few pixels by one level. A wrong step (no antialias, other crop, no
    # rounding) differs by many levels or on a large share of pixels.
    assert err.max() < 1.01, err.max()
    assert (err > 0.5).mean() < 0.05, (err > 0.5).mean()


@pytest.mark.parametrize("crop", [256, 384])
def test_libero_frames_through_the_real_checkpoints_processing(crop):
    """LIBERO's 256x256 frames as the ViT-L/ViT-g 256 (resize 292, crop 256) and ViT-g 384 (resize
    438, crop 384) checkpoints' processors prepare them."""
    from world_modality.world.vjepa2_processing import vjepa2_resize_crop

    p = VJEPA2Processing.for_crop(crop)
    rng = np.random.default_rng(crop)
    frames = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    x = vjepa2_resize_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), p.shortest_edge, crop)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, crop, crop)
    ref = np.stack([_reference(f, p.shortest_edge, crop, (0, 0, 0), (1 / 255,) * 3) for f in frames])
    diff = np.abs(x.numpy().astype(np.float64) - ref)
    assert diff.max() <= 1.0 + 1e-9 and (diff > 0.5).mean() < 0.05


def test_preprocess_differs_from_plain_resize(model_dir):
    """The pretrained encoder crops the center; a plain resize would keep the borders."""
    enc = build_world_encoder(name="vjepa2", num_frames=4, pretrained_path=model_dir)
    frames = np.zeros((1, 4, 64, 64, 3), np.uint8)
    frames[:, :, :2] = 255  # a bright band on the top border: cropped away
    x = enc.preprocess(frames)
    black = -np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)
    assert torch.allclose(x, torch.tensor(black, dtype=torch.float32).view(1, 1, 3, 1, 1).expand_as(x), atol=1e-5)


def test_processor_config_is_read(tmp_path):
    path = _save_tiny(tmp_path / "m")
    (tmp_path / "m" / "video_preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": 48, "width": 48},
                "size": {"shortest_edge": 999},
                "resample": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "rescale_factor": 1 / 255,
                "do_resize": True,
                "do_center_crop": True,
                "do_normalize": True,
                "do_rescale": True,
                "video_processor_type": "VJEPA2VideoProcessor",
            }
        )
    )
    p = read_processing(path, CROP)
    # The processor recomputes the resize from crop_size, whatever "size" says.
    assert p == VJEPA2Processing(48, 54, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    enc = build_world_encoder(name="vjepa2", num_frames=4, pretrained_path=path)
    assert enc.image_size == 48
    assert enc.encode(np.zeros((1, 4, 60, 60, 3), np.uint8)).shape == (1, 64)
    (tmp_path / "m" / "video_preprocessor_config.json").write_text(json.dumps({"crop_size": 48, "resample": 3}))
    with pytest.raises(ValueError, match="resample=3"):
        read_processing(path, CROP)


def test_latent_width_is_read_from_the_config(tmp_path):
    enc = build_world_encoder(name="vjepa2", num_frames=2, pretrained_path=_save_tiny(tmp_path / "w", hidden_size=48))
    assert enc.latent_dim == 48
    assert enc.encode(np.zeros((3, 2, 32, 32, 3), np.uint8)).shape == (3, 48)


def test_window_must_respect_the_tubelet(model_dir):
    with pytest.raises(ValueError, match=r"num_frames=3 \(latent_suffix m3\).*tubelet_size=2"):
        build_world_encoder(name="vjepa2", num_frames=3, pretrained_path=model_dir)


def test_image_size_must_be_the_crop(model_dir):
    with pytest.raises(ValueError, match="takes 32x32 crops"):
        build_world_encoder(name="vjepa2", num_frames=4, image_size=64, pretrained_path=model_dir)


def test_dtype_option_and_identity(model_dir):
    f32 = build_world_encoder(name="vjepa2", num_frames=4, pretrained_path=model_dir)
    assert f32.dtype == torch.float32 and f32.device.type == "cpu"  # "auto" without CUDA
    bf16 = build_world_encoder(name="vjepa2", num_frames=4, pretrained_path=model_dir, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16 and bf16.config_dict()["dtype"] == "bfloat16"
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 40, 40, 3), dtype=np.uint8)
    z32, z16 = f32.encode(frames), bf16.encode(frames)
    assert z16.dtype == torch.float32 and torch.allclose(z16, z32, atol=0.1, rtol=0.05)
    assert bf16.encoder_id != f32.encoder_id  # other latents, other cache
    rebuilt = WorldEncoder.from_checkpoint(bf16.config_dict())
    assert rebuilt.encoder_id == bf16.encoder_id and rebuilt.dtype == torch.bfloat16


def test_real_path_cache_and_checkpoint_round_trip(fixture_dataset, model_dir, tmp_path):
    """world_encoder: vjepa2 from a folder, through the code the CLI uses: latent cache, policy,
    checkpoint without the encoder's weights, reload from the path with its identity verified."""
    from safetensors import safe_open

    from world_modality.pipeline import prepare_data
    from world_modality.policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from world_modality.policy.factory import build_policy, world_encoder_from_config
    from world_modality.policy.model import PolicyShapes
    from world_modality.policy.tokenizer import build_tokenizer

    cfg = tiny_config(
        fixture_dataset,
        tmp_path / "run",
        world_encoder="vjepa2",
        world_encoder_path=model_dir,
        latent_cache_dir=str(tmp_path / "cache"),
    )
    enc = world_encoder_from_config(cfg)
    assert enc.name == "vjepa2" and enc.image_size == CROP and enc.latent_dim == 64
    data = prepare_data(cfg, enc, progress=False)
    assert data.latents.latents.shape == (len(data.dataset.state), 64)
    cache_files = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))  # not its lock
    assert len(cache_files) == 2 and cache_files[0].startswith("vjepa2-m4-")
    meta = json.loads((tmp_path / "cache" / cache_files[0]).read_text())
    assert meta["encoder_id"] == enc.encoder_id
    # A second preparation reads the cache; its latents are the encoder's on the same windows.
    again = prepare_data(cfg, enc, progress=False)
    assert np.array_equal(again.latents.latents, data.latents.latents)
    frames = data.dataset.images(cfg.world.world_image_key)
    from world_modality.data.windows import past_frame_rows
    from world_modality.pipeline import window_spec

    rows = past_frame_rows(data.dataset.episodes, window_spec(cfg))[:3]
    assert np.allclose(enc.encode(frames[rows]).numpy(), data.latents.latents[:3], atol=1e-5)

    ds = data.dataset
    policy = build_policy(
        cfg,
        PolicyShapes(ds.state.shape[1], ds.action.shape[1], enc.latent_dim),
        tokenizer=build_tokenizer(sorted(set(ds.instructions))),
        world_encoder=enc,
    )
    ckpt = save_checkpoint(tmp_path / "ckpt", policy)
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("world_encoder.") for k in f.keys())
    saved = json.loads((ckpt / "policy.json").read_text())["world_encoder"]
    assert saved["pretrained_path"] == model_dir and saved["encoder_id"] == enc.encoder_id
    loaded = load_checkpoint(ckpt)
    assert loaded.world_encoder.encoder_id == enc.encoder_id
    assert torch.equal(loaded.world_encoder.encode(frames[rows]), enc.encode(frames[rows]))
    # Other weights at the path: the checkpoint refuses them instead of acting on other latents.
    _save_tiny(model_dir, seed=1)
    try:
        with pytest.raises((CheckpointError, ValueError), match="encoder"):
            load_checkpoint(ckpt)
    finally:
        _save_tiny(model_dir, seed=0)


def test_hub_cache_id_loads_offline_with_its_processor_config(tmp_path):
    """A hub-cache id resolves in the user's cache (here a fresh one), processor config included;
    nothing is fetched (the process runs offline)."""
    import os
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--vjepa2-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = _save_tiny(repo / "snapshots" / commit, crop=48)
    (repo / "snapshots" / commit / "video_preprocessor_config.json").write_text(json.dumps({"crop_size": 48}))
    code = (
        "from world_modality.world.encoder import build_world_encoder as b; "
        "e = b(name='vjepa2', num_frames=2, pretrained_path='acme/vjepa2-tiny'); "
        "print(e.image_size, e.processing.shortest_edge, e.latent_dim)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["48", "54", "64"]
    assert snap.endswith(commit)
