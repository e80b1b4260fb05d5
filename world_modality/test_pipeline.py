import torch

from world_modality.pipeline import random_shift


def test_random_shift_moves_content_and_keeps_shape():
    img = torch.zeros(2, 1, 3, 16, 16)
    img[:, :, :, 8, 8] = 1.0
    torch.manual_seed(0)
    out = random_shift(img, 4)
    assert out.shape == img.shape
    moved = [tuple(torch.nonzero(out[i, 0, 0])[0].tolist()) for i in range(2)]
    assert all(abs(r - 8) <= 4 and abs(c - 8) <= 4 for r, c in moved)
    assert float(out.sum()) == float(img.sum())
    assert torch.equal(random_shift(img, 0), img)


def test_random_shift_is_seeded():
    img = torch.rand(3, 2, 3, 8, 8)
    a = random_shift(img, 2, torch.Generator().manual_seed(1))
    b = random_shift(img, 2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, img)


def test_cameras_are_read_at_the_size_evaluation_renders(tmp_path):
    """Policy and world cameras come from the frame cache at cfg.data.image_size, the size the simulator
    renders at in closed-loop evaluation; against resizing the native frames in float (the path before
    the cache), the policy's input differs by uint8 rounding only."""
    import numpy as np
    import torch.nn.functional as F

    from conftest import tiny_config
    from world_modality.data.fixture import make_fixture_dataset
    from world_modality.data.windows import past_frame_rows
    from world_modality.pipeline import FrameSamples, prepare_data, window_spec
    from world_modality.policy.backbone import build_tiny_qwen
    from world_modality.policy.factory import world_encoder_from_config
    from world_modality.policy.preprocess import ObservationPreprocessor
    from world_modality.policy.tokenizer import build_tokenizer

    root = make_fixture_dataset(tmp_path / "ds", n_episodes=4, length=12, image_size=64, use_videos=True)
    cfg = tiny_config(root, tmp_path / "run")
    assert cfg.data.image_size == 32
    enc = world_encoder_from_config(cfg)
    data = prepare_data(cfg, enc, progress=False)
    samples = FrameSamples(data, data.train_rows, cfg.data.image_keys)
    assert all(samples[0][k].shape == (32, 32, 3) for k in cfg.data.image_keys)

    world = data.dataset.images(cfg.world.world_image_key, 32)
    past = past_frame_rows(data.dataset.episodes, window_spec(cfg))[:5]
    assert data.latents.meta["frame_size"] == 32
    np.testing.assert_allclose(enc.encode(world[past]).numpy(), data.latents.latents[:5], atol=1e-5)

    pre = ObservationPreprocessor(
        build_tiny_qwen(build_tokenizer(sorted(set(data.dataset.instructions)))),
        cfg.data.image_keys,
        32,
        n_act_tokens=2,
    )
    batch = [samples[i] for i in range(8)]
    new = pre(batch).images
    rows = [s["row"] for s in batch]
    old = torch.stack(
        [
            F.interpolate(
                torch.from_numpy(np.array(data.dataset.images(k)[rows])).permute(0, 3, 1, 2).float() / 255,
                size=(32, 32),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            for k in cfg.data.image_keys
        ],
        dim=1,
    )
    diff = (new - old).abs()
    assert 0 < diff.max() <= 0.5 / 255 + 1e-6, diff.max()

    # Collation: the preprocessor's Batch plus the training targets and latents, typed.
    from world_modality.pipeline import make_collate
    from world_modality.policy.types import Batch

    collated = make_collate(pre)(batch)
    assert isinstance(collated, Batch) and torch.equal(collated.images, new)
    assert torch.equal(collated.row, torch.tensor(rows)) and collated.z_t.shape == (8, data.latents.latent_dim)
    assert collated.z_future.shape == collated.z_t.shape and collated.z_other is None
    assert collated.actions.dtype == torch.float32 and collated.actions.shape[:2] == collated.action_mask.shape


def test_frames_already_at_the_image_size_are_read_unchanged(tmp_path):
    import numpy as np

    from conftest import tiny_config
    from world_modality.data.fixture import make_fixture_dataset
    from world_modality.pipeline import FrameSamples, prepare_data

    root = make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=6, image_size=32)
    cfg = tiny_config(root, tmp_path / "run", preset="E0")
    data = prepare_data(cfg, None, progress=False)
    samples = FrameSamples(data, data.train_rows, cfg.data.image_keys)
    for k in cfg.data.image_keys:
        np.testing.assert_array_equal(samples.images[k], data.dataset.images(k))


def test_a_dataset_folder_that_cannot_be_written_keeps_both_caches_in_the_user_cache(tmp_path, monkeypatch):
    from conftest import tiny_config
    from world_modality.data.fixture import make_fixture_dataset
    from world_modality.pipeline import prepare_data
    from world_modality.policy.factory import world_encoder_from_config

    root = make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=6, image_size=32)
    (root / ".cache").write_text("a file where the cache folder would go")  # mkdir fails, as on a read-only copy
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    cfg = tiny_config(root, tmp_path / "run")
    data = prepare_data(cfg, world_encoder_from_config(cfg), progress=False)
    user = tmp_path / "user" / "world_modality"
    assert data.latents.path.startswith(str(user / "latents"))
    assert str(data.dataset.images(cfg.world.world_image_key, 32).filename).startswith(str(user / "frames"))
