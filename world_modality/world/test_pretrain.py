"""pretrain-world: V-JEPA training of the tiny encoder lowers its own loss, resumes exactly, refuses other
settings in the same folder, and leaves a folder the `vjepa2` path loads unchanged."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from world_modality.config import ConfigError, build_config
from world_modality.policy.factory import world_encoder_from_config
from world_modality.world.pretrain import PretrainSettings, pretrain
from world_modality.world.pretrain_checkpoint import checkpoints
from world_modality.world.pretrain_jepa import MASKS, block_mask, encode_context, preprocess, sample_masks

# 64-px crops of the 32-px fixture frames: a 4x4 token grid (2 tubelets deep), so the masks have room.
FAST = dict(image_size=32, world_image_size=64, batch_size=8, warmup_steps=5, num_threads=1, save_every=5)


def QUIET(_):
    pass


def settings(dataset, **kw) -> PretrainSettings:
    return PretrainSettings(dataset=str(dataset), **{**FAST, **kw})


@pytest.fixture(scope="module")
def pretrained(fixture_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "enc"
    result = pretrain(settings(fixture_dataset, steps=40), out, progress=False, log=QUIET)
    return out, result


def test_masks_hide_whole_tubes_and_leave_context():
    rng = np.random.default_rng(0)
    for num_blocks, scale in MASKS:
        hidden = block_mask(rng, 4, num_blocks, scale)
        assert hidden.shape == (4, 4)
        ctx, tgt = sample_masks(rng, 5, grid=4, depth=2, num_blocks=num_blocks, scale=scale)
        assert ctx.shape[0] == tgt.shape[0] == 5 and ctx.shape[1] >= 1 and tgt.shape[1] >= 1
        for c, t in zip(ctx.numpy(), tgt.numpy()):
            assert not set(c) & set(t)  # a token is seen or predicted, never both
            # Tubes: a hidden spatial position is hidden at every time step (token = time*16 + row*4 + col).
            assert set(t % 16).isdisjoint(set(c % 16))


def test_context_encoder_never_sees_hidden_tokens():
    """Changing the pixels of hidden patches leaves the context encoding unchanged (HF's own forward with
    context_mask would not: its encoder attends to every token before the mask is applied)."""
    from transformers import VJEPA2Model

    from world_modality.world.vjepa2_loading import tiny_vjepa2_config

    torch.manual_seed(0)
    model = VJEPA2Model(tiny_vjepa2_config(4, 64)).eval()
    x = torch.randn(1, 4, 3, 64, 64)
    hidden = torch.zeros(4, 4, dtype=torch.bool)
    hidden[:2, :2] = True  # top-left 32x32 pixels, all frames
    tubes = hidden.reshape(-1).repeat(2)
    ctx = torch.nonzero(~tubes).reshape(1, -1)
    y = x.clone()
    y[..., :32, :32] += 5.0
    with torch.no_grad():
        assert torch.allclose(encode_context(model.encoder, x, ctx), encode_context(model.encoder, y, ctx), atol=1e-6)
        full_x = model(pixel_values_videos=x, skip_predictor=True).last_hidden_state[:, ctx[0]]
        full_y = model(pixel_values_videos=y, skip_predictor=True).last_hidden_state[:, ctx[0]]
    assert not torch.allclose(full_x, full_y, atol=1e-3)


def test_pretraining_lowers_its_loss(pretrained):
    out, result = pretrained
    losses = np.array(result.losses)
    assert len(losses) == 40 and np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    print(f"pretrain loss on the fixture: first 5 steps {first:.4f}, last 5 steps {last:.4f}")
    assert last < 0.7 * first, (first, last)
    rows = [json.loads(x) for x in (out / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert (out / "losses.png").stat().st_size > 0


def test_saved_folder_loads_through_the_vjepa2_path(pretrained, fixture_dataset, tmp_path):
    out, _ = pretrained
    assert {"config.json", "model.safetensors", "video_preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    cfg = tiny_config(fixture_dataset, tmp_path / "run", world_encoder="vjepa2", world_encoder_path=str(out))
    enc = world_encoder_from_config(cfg)
    assert enc.image_size == 64 and enc.latent_dim == 64 and enc.pretrained_path == str(out)
    window = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    z = enc.encode(window)
    assert z.shape == (2, 64) and torch.isfinite(z).all()
    # Trained on exactly the inputs the loading path gives it.
    assert torch.equal(preprocess(window, enc.processing), enc.preprocess(window))
    # The encoder saved is the EMA target of the last checkpoint, not the random init.
    saved = load_file(str(out / "model.safetensors"))
    ckpt = load_file(str(checkpoints(out)[-1] / "state.safetensors"))
    key = "encoder.layer.0.attention.query.weight"
    assert torch.equal(saved[key], ckpt[f"target.{key.removeprefix('encoder.')}"])
    init = world_encoder_from_config(tiny_config(fixture_dataset, tmp_path / "r", world_image_size=64))
    assert not torch.equal(saved[key], init.model.state_dict()[key])
    # The preset that uses it.
    e2p = build_config({"dataset": str(fixture_dataset), "world_encoder_path": str(out)}, preset="E2-Pretrained")
    assert e2p.world.world_encoder == "vjepa2" and e2p.world.lambda_world == 0.2


def test_preset_needs_the_encoder_folder():
    with pytest.raises(ConfigError, match="E2-Pretrained needs --world_encoder_path"):
        build_config({}, preset="E2-Pretrained")


def test_rerun_with_more_steps_continues_exactly(fixture_dataset, tmp_path):
    short = pretrain(settings(fixture_dataset, steps=6, save_every=3), tmp_path / "a", progress=False, log=QUIET)
    assert short.resumed_from == 0 and len(short.losses) == 6
    more = pretrain(settings(fixture_dataset, steps=10, save_every=3), tmp_path / "a", progress=False, log=QUIET)
    assert more.resumed_from == 6 and len(more.losses) == 4  # continued, not restarted
    whole = pretrain(settings(fixture_dataset, steps=10, save_every=3), tmp_path / "b", progress=False, log=QUIET)
    assert np.allclose(short.losses + more.losses, whole.losses, rtol=0, atol=0)
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    steps = [json.loads(x)["step"] for x in (tmp_path / "a" / "losses.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))
    # A run killed between its step-9 and step-10 checkpoints (simulated: the step-10 one moved away) resumes
    # from step 9, repeats step 10 exactly, and logs it once.
    newest = checkpoints(tmp_path / "a")[-1]
    assert newest.name == "step-0000010"
    newest.rename(newest.parent / ".moved-away")
    again = pretrain(settings(fixture_dataset, steps=10, save_every=3), tmp_path / "a", progress=False, log=QUIET)
    assert again.resumed_from == 9 and again.losses == whole.losses[9:]
    steps = [json.loads(x)["step"] for x in (tmp_path / "a" / "losses.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_other_settings_into_the_same_folder_are_refused(fixture_dataset, tmp_path):
    pretrain(settings(fixture_dataset, steps=2), tmp_path / "o", progress=False, log=QUIET)
    with pytest.raises(ConfigError, match=r"other settings \(lr: saved 0.001 vs now 0.002\)"):
        pretrain(settings(fixture_dataset, steps=4, lr=2e-3), tmp_path / "o", progress=False, log=QUIET)
    with pytest.raises(ConfigError, match="already holds 2 steps"):
        pretrain(settings(fixture_dataset, steps=1), tmp_path / "o", progress=False, log=QUIET)
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        pretrain(settings(fixture_dataset, steps=2), tmp_path / "stray", progress=False, log=QUIET)


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"lr": 0.0}, "`lr`"),
        ({"steps": 0}, "`steps`"),
        ({"ema": 1.0}, "`ema`"),
        ({"latent_suffix": "m3"}, "tubelet_size"),
        ({"world_image_size": 40}, "patch_size"),
    ],
)
def test_bad_settings_are_named(fixture_dataset, tmp_path, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        pretrain(settings(fixture_dataset, **kw), tmp_path / "x", progress=False, log=QUIET)
    assert not (tmp_path / "x").exists()


def test_cli_pretrain_world_one_line_errors(fixture_dataset, tmp_path, capsys):
    from world_modality.cli import main

    (tmp_path / "file").write_text("x")
    assert main(["pretrain-world", "--dataset", str(fixture_dataset), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["pretrain-world", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
