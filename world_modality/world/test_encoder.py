"""Tests for the world encoders: shapes, preprocessing, seeded determinism, identity, checkpoint round trip."""

import numpy as np
import pytest
import torch

from world_modality.world.encoder import WorldEncoder, build_world_encoder
from world_modality.world.vjepa2_processing import IMAGENET_MEAN, IMAGENET_STD

M = 4
S = 32


@pytest.fixture(scope="module")
def enc():
    return build_world_encoder(num_frames=M, image_size=S, seed=0)


def _frames(b=3, m=M, h=40, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, m, h, w, 3), dtype=np.uint8)


def test_encode_shape_dtype_and_frozen(enc):
    z = enc.encode(_frames())
    assert z.shape == (3, enc.latent_dim)
    assert z.dtype == torch.float32
    assert torch.isfinite(z).all()
    assert enc.latent_dim == enc.model.config.hidden_size
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training


def test_preprocess_resizes_and_normalizes(enc):
    frames = np.zeros((2, M, 48, 48, 3), dtype=np.uint8)
    frames[..., 0] = 255
    x = enc.preprocess(frames)
    assert x.shape == (2, M, 3, S, S)
    expected = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]] + [-IMAGENET_MEAN[c] / IMAGENET_STD[c] for c in (1, 2)]
    for c in range(3):
        assert torch.allclose(x[:, :, c], torch.full_like(x[:, :, c], expected[c]), atol=1e-5)
    # A torch tensor input gives the same result as numpy.
    assert torch.equal(enc.preprocess(torch.from_numpy(frames)), x)


def test_preprocess_rejects_bad_input(enc):
    with pytest.raises(TypeError):
        enc.preprocess(_frames().astype(np.float32))
    with pytest.raises(ValueError, match="m=4"):
        enc.preprocess(_frames(m=2))


def test_batch_independence(enc):
    f = _frames(b=4)
    z_all = enc.encode(f)
    z_one = enc.encode(f[2:3])
    assert torch.allclose(z_all[2:3], z_one, atol=1e-5)
    assert not torch.allclose(z_all[0], z_all[1])


def test_seed_determinism_and_identity(enc):
    rng_before = torch.get_rng_state()
    same = build_world_encoder(num_frames=M, image_size=S, seed=0)
    assert torch.equal(rng_before, torch.get_rng_state()), "building must not touch the global RNG"
    other = build_world_encoder(num_frames=M, image_size=S, seed=1)
    f = _frames()
    assert same.encoder_id == enc.encoder_id
    assert torch.equal(same.encode(f), enc.encode(f))
    assert other.encoder_id != enc.encoder_id
    assert not torch.allclose(other.encode(f), enc.encode(f))
    assert enc.encoder_id.startswith(f"tiny-vjepa2-m{M}-")


def test_id_depends_on_num_frames():
    a = build_world_encoder(num_frames=2, image_size=S)
    b = build_world_encoder(num_frames=4, image_size=S)
    assert a.encoder_id != b.encoder_id
    assert "-m2-" in a.encoder_id and "-m4-" in b.encoder_id


def test_num_frames_must_be_multiple_of_tubelet():
    with pytest.raises(ValueError, match=r"num_frames=3.*tubelet_size=2"):
        build_world_encoder(num_frames=3, image_size=S)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown world encoder"):
        build_world_encoder(name="nope")


def test_checkpoint_round_trip(enc):
    cfg = enc.config_dict()
    weights = enc.state_dict_for_checkpoint()
    assert weights and all(isinstance(v, torch.Tensor) for v in weights.values())
    # Perturb the weights: the rebuilt encoder must take the saved ones, not the seeded init.
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    changed = build_world_encoder(num_frames=M, image_size=S, seed=0)
    changed.model.load_state_dict(weights, strict=True)
    cfg_changed = {**cfg, "encoder_id": changed.refresh_id()}
    rebuilt = WorldEncoder.from_checkpoint(cfg_changed, weights)
    assert rebuilt.encoder_id == changed.encoder_id != enc.encoder_id
    f = _frames()
    assert torch.equal(rebuilt.encode(f), changed.encode(f))
    # Claiming the original id with perturbed weights is caught.
    with pytest.raises(ValueError, match="encoder_id"):
        WorldEncoder.from_checkpoint(cfg, weights)
    with pytest.raises(RuntimeError):
        WorldEncoder.from_checkpoint(cfg, {k: v for k, v in list(weights.items())[1:]})


def test_pretrained_from_local_dir(enc, tmp_path):
    enc.model.save_pretrained(tmp_path / "vjepa2-tiny")
    loaded = build_world_encoder(name="vjepa2", num_frames=M, pretrained_path=str(tmp_path / "vjepa2-tiny"))
    assert loaded.image_size == S  # taken from the saved crop_size
    assert loaded.state_dict_for_checkpoint() is None
    # Same weights; the pretrained path preprocesses as its video processor does (resize + crop).
    x = enc.preprocess(_frames())
    with torch.no_grad():
        a = loaded.model(pixel_values_videos=x, skip_predictor=True).last_hidden_state
        b = enc.model(pixel_values_videos=x, skip_predictor=True).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
    assert loaded.preprocess(_frames()).shape == x.shape and not torch.allclose(loaded.preprocess(_frames()), x)


def test_pretrained_missing_path_is_clear(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded") as e:
        build_world_encoder(name="vjepa2", pretrained_path=missing)
    assert missing in str(e.value)
    with pytest.raises(ValueError, match="pretrained_path"):
        build_world_encoder(name="vjepa2")


# --- spatial world tokens -------------------------------------------------------------------------
def test_one_world_token_is_the_mean_over_all_tokens_exactly(enc):
    """N = 1 (default) is the code path without pooling, bit for bit, with the id it had before the option."""
    f = _frames()
    with torch.no_grad():
        tokens = enc.model(pixel_values_videos=enc.preprocess(f), skip_predictor=True).last_hidden_state
    assert enc.world_tokens == 1 and enc.latent_dim == enc.token_dim
    assert torch.equal(enc.encode(f), tokens.float().mean(dim=1))
    explicit = build_world_encoder(num_frames=M, image_size=S, seed=0, world_tokens=1)
    assert explicit.encoder_id == enc.encoder_id and "-t" not in enc.encoder_id.removeprefix("tiny-vjepa2")
    assert torch.equal(explicit.encode(f), enc.encode(f))


def test_four_world_tokens_are_the_quadrants_of_the_time_averaged_token_map():
    """N = 4 at 64 px (a 4x4 patch grid, 2 time steps for m = 4): token (i, j) is the mean over time and over the
    2x2 patches of quadrant (i, j), tokens concatenated row-major; their mean is the one-token latent."""
    one = build_world_encoder(num_frames=M, image_size=64, seed=0)
    four = build_world_encoder(num_frames=M, image_size=64, seed=0, world_tokens=4)
    d = four.token_dim
    assert four.latent_dim == 4 * d and d == one.latent_dim
    f = _frames(b=2, h=70, w=70)
    z = four.encode(f)
    assert z.shape == (2, 4 * d) and z.dtype == torch.float32 and torch.isfinite(z).all()
    with torch.no_grad():
        raw = four.model(pixel_values_videos=four.preprocess(f), skip_predictor=True).last_hidden_state.float()
    grid = raw.view(2, M // 2, 4, 4, d).mean(dim=1)  # (B, rows, cols, D)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        cell = grid[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(1, 2))
        torch.testing.assert_close(z[:, k * d : (k + 1) * d], cell, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.view(2, 4, d).mean(dim=1), one.encode(f), rtol=1e-5, atol=1e-5)
    # Same weights, other latents: the identity says so (and so the latent cache's key does).
    assert "-t4-" in four.encoder_id and four.encoder_id != one.encoder_id
    assert four.encoder_id.rsplit("-", 1)[1] == one.encoder_id.rsplit("-", 1)[1]


@pytest.mark.parametrize(
    "n,needle",
    [(2, "perfect square"), (3, "perfect square"), (0, "perfect square"), (9, r"at most the encoder's 2x2 patch grid")],
)
def test_bad_world_tokens_are_refused(n, needle):
    with pytest.raises(ValueError, match=needle):
        build_world_encoder(num_frames=M, image_size=S, world_tokens=n)  # 32 px: a 2x2 grid, at most 4 tokens


def test_env_state_takes_one_world_token_only():
    with pytest.raises(ValueError, match=r"'env_state' is a state vector.*world_tokens must be 1, got 4"):
        build_world_encoder(name="env_state", num_frames=M, world_tokens=4)
    assert build_world_encoder(name="env_state", num_frames=M, world_tokens=1).num_frames == M


def test_world_tokens_round_trip_through_the_checkpoint_config():
    four = build_world_encoder(num_frames=M, image_size=S, seed=0, world_tokens=4)
    cfg = four.config_dict()
    assert cfg["world_tokens"] == 4
    rebuilt = WorldEncoder.from_checkpoint(cfg, four.state_dict_for_checkpoint())
    assert rebuilt.world_tokens == 4 and rebuilt.encoder_id == four.encoder_id
    f = _frames()
    assert torch.equal(rebuilt.encode(f), four.encode(f))
    old = {
        k: v
        for k, v in build_world_encoder(num_frames=M, image_size=S, seed=0).config_dict().items()
        if k != "world_tokens"
    }  # a checkpoint from before the option: one token
    assert WorldEncoder.from_checkpoint(old).world_tokens == 1
