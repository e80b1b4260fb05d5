"""The privileged world encoder `env_state` without the simulator: layout, normalisation, the pipeline's latents,
checkpoints, the runner's inputs, and the refusal of a dataset without `observation.environment_state`."""

import json

import numpy as np
import pytest
import torch

from world_modality.data.env_state import ENV_STATE_KEY, align, merge_names, read_env_state, state_names
from world_modality.data.fixture import make_fixture_dataset
from world_modality.data.lerobot import load_dataset
from world_modality.world.encoder import build_world_encoder
from world_modality.world.env_state import MIN_STD, EnvStateEncoder


@pytest.fixture(scope="module")
def state_dataset(tmp_path_factory):
    return make_fixture_dataset(
        tmp_path_factory.mktemp("state") / "fx",
        n_episodes=6,
        length=12,
        image_size=32,
        seed=3,
        with_environment_state=True,
    )


def test_layout_names_objects_then_joints_in_a_fixed_order():
    joints = [("wooden_cabinet_1", "top_level"), ("flat_stove_1", "button")]
    names = state_names(["plate_1", "akita_black_bowl_1"], joints)
    assert names[:7] == [
        "akita_black_bowl_1.pos.x",
        "akita_black_bowl_1.pos.y",
        "akita_black_bowl_1.pos.z",
        "akita_black_bowl_1.quat.w",
        "akita_black_bowl_1.quat.x",
        "akita_black_bowl_1.quat.y",
        "akita_black_bowl_1.quat.z",
    ]
    assert names[7] == "plate_1.pos.x" and names[14:] == ["flat_stove_1.button.qpos", "wooden_cabinet_1.top_level.qpos"]
    # Several scenes: the union in the same order; a scene's vector laid out in it has 0 where it lacks an entry.
    other = state_names(["cookies_1", "plate_1"], [])
    union = merge_names([names, other])
    assert union == state_names(
        ["akita_black_bowl_1", "cookies_1", "plate_1"], [("flat_stove_1", "button"), ("wooden_cabinet_1", "top_level")]
    )
    v = np.arange(len(other), dtype=np.float32) + 1
    out = align(v, other, union)
    assert out[union.index("cookies_1.pos.x")] == 1 and out[union.index("akita_black_bowl_1.pos.x")] == 0
    with pytest.raises(ValueError, match="cookies_1.pos.x"):
        align(v, other, names)


def test_fixture_records_the_state_with_its_names_in_info_json(state_dataset):
    info = json.loads((state_dataset / "meta" / "info.json").read_text())
    feat = info["features"][ENV_STATE_KEY]
    assert feat["dtype"] == "float32" and feat["shape"] == [14] and feat["names"][0] == "block_1.pos.x"
    assert ENV_STATE_KEY in json.loads((state_dataset / "meta" / "stats.json").read_text())
    ds = load_dataset(state_dataset)
    values, names = read_env_state(ds)
    assert values.shape == (len(ds), 14) and names == feat["names"]
    np.testing.assert_array_equal(values[:, :2], ds.state[:, :2])  # the block's position is the fixture's state
    # The public schema is otherwise unchanged: the default fixture has no such column.
    assert (
        "observation.environment_state"
        not in load_dataset(
            make_fixture_dataset(state_dataset.parent / "plain", n_episodes=1, length=4, image_size=16)
        ).features
    )


def test_encoder_normalises_each_frame_and_concatenates_the_window():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 3)).astype(np.float32)
    train[:, 2] = 0.25  # constant over training: carries nothing, so it is 0, never divided by ~0
    enc = EnvStateEncoder(2).fit(train, ["a.x", "a.y", "b.j.qpos"])
    assert enc.latent_dim == 6
    window = np.stack([train[:2], train[2:4]])  # (B=2, m=2, D=3)
    z = enc.encode(window).numpy()
    mean, std = train.mean(0, dtype=np.float64), train.std(0, dtype=np.float64)
    expect = (window[..., :2] - mean[:2].astype(np.float32)) / std[:2].astype(np.float32)
    np.testing.assert_allclose(z.reshape(2, 2, 3)[..., :2], expect, rtol=1e-5)
    assert std[2] < MIN_STD and (z.reshape(2, 2, 3)[..., 2] == 0).all()
    z_jitter = enc.encode(window + np.array([0, 0, 1e-6], np.float32)).numpy()
    assert (z_jitter.reshape(2, 2, 3)[..., 2] == 0).all()
    with pytest.raises(ValueError, match=r"\(B, m=2, D=3\)"):
        enc.encode(np.zeros((1, 3, 3)))


def test_encoder_rebuilds_exactly_from_its_config_through_json():
    enc = EnvStateEncoder(4).fit(np.random.default_rng(1).normal(size=(30, 5)), [f"o.{f}" for f in "vwxyz"])
    cfg = json.loads(json.dumps(enc.config_dict()))
    again = build_world_encoder(**{k: v for k, v in cfg.items() if k != "encoder_id"}, device="cpu")
    assert again.encoder_id == enc.encoder_id == cfg["encoder_id"]
    x = np.random.default_rng(2).normal(size=(3, 4, 5))
    assert torch.equal(again.encode(x), enc.encode(x))
    with pytest.raises(ValueError, match="no weights"):
        build_world_encoder("env_state", num_frames=4, pretrained_path="/models/x")


def test_pipeline_latents_are_the_normalised_windows_of_the_training_statistics(state_dataset):
    from conftest import tiny_config
    from world_modality.data.windows import past_frame_rows
    from world_modality.pipeline import prepare_data, window_spec
    from world_modality.policy.factory import world_encoder_from_config

    cfg = tiny_config(state_dataset, "unused", preset="E2-State", frame_stride=2)
    enc = world_encoder_from_config(cfg)
    assert not enc.fitted
    data = prepare_data(cfg, enc, progress=False)
    values, _ = read_env_state(data.dataset)
    train = values[data.train_rows].astype(np.float64)
    np.testing.assert_allclose(enc.mean.numpy(), train.mean(0), atol=1e-6)
    past = past_frame_rows(data.dataset.episodes, window_spec(cfg))
    assert (past[:, :-1] != past[:, 1:]).any()  # the windows do span several frames
    m, d = cfg.world.num_frames, values.shape[1]
    z = data.latents.latents.reshape(len(values), m, d)
    row = int(data.val_rows[-1])
    scale = np.where(enc.std.numpy() >= MIN_STD, 1 / np.maximum(enc.std.numpy(), MIN_STD), 0)
    np.testing.assert_allclose(z[row], (values[past[row]] - enc.mean.numpy()) * scale, rtol=1e-5, atol=1e-6)
    # Another run (a checkpoint's fitted encoder) gets the same latents, not statistics refitted elsewhere.
    again = prepare_data(
        cfg, build_world_encoder(**{k: v for k, v in enc.config_dict().items() if k != "encoder_id"}), progress=False
    )
    np.testing.assert_array_equal(again.latents.latents, data.latents.latents)


def test_env_state_is_refused_on_a_dataset_without_it_in_one_line(fixture_dataset, tmp_path, capsys):
    from world_modality.cli import main

    argv = [
        "train",
        "--preset",
        "E2-State",
        "--dataset",
        str(fixture_dataset),
        "--image_size",
        "32",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "'observation.environment_state'" in err and str(fixture_dataset) in err
    assert not (tmp_path / "run").exists()


def test_e2_state_trains_checkpoints_and_acts_on_state_windows(state_dataset, tmp_path):
    from conftest import tiny_config
    from world_modality.analysis.offline import evaluate_offline
    from world_modality.config import matching_preset
    from world_modality.evaluate.rollout import run_episode
    from world_modality.inference.runner import PolicyRunner
    from world_modality.policy.checkpoint import load_checkpoint
    from world_modality.train import train

    ckpt = train(tiny_config(state_dataset, tmp_path / "run", preset="E2-State", max_epochs=1), progress=False)
    meta = json.loads((ckpt / "policy.json").read_text())["world_encoder"]
    assert meta["name"] == "env_state" and len(meta["mean"]) == len(meta["names"]) == 14
    policy = load_checkpoint(ckpt)
    assert policy.shapes.latent_dim == 4 * 14 and matching_preset(policy.cfg) == "E2-State"
    assert policy.world_encoder.encoder_id == meta["encoder_id"]
    result = evaluate_offline(ckpt, modes=["predicted", "zero", "shuffle"])
    assert result["world_mse_copy_last"] > 0

    runner = PolicyRunner(ckpt, device="cpu")
    assert runner.world_key == ENV_STATE_KEY and set(runner.render_sizes) == set(runner.image_keys)
    env, windows, act = _StateEnv(runner.world_state_names), [], runner.act
    runner.act = lambda obs, frames: windows.append(frames[:, 0].tolist()) or act(obs, frames)
    out = run_episode(env, runner, 0, replan_every=4)
    assert out["steps"] == env.max_steps and runner.frame_stride == 4 and runner.control_steps_per_frame == 1
    # The state is read only at the frames an image encoder would render (here the replanning ones), and each
    # window holds frames r-3s..r, frame 0 repeated before the start, as training windows do.
    assert env.reads == [0, 4, 8]
    assert windows == [[0, 0, 0, 0], [0, 0, 0, 4], [0, 0, 4, 8]]
    assert runner.inputs(env.observe(), np.zeros((4, 14))).world_frames.shape == (1, 4, 14)


class _StateEnv:
    """A stand-in for `sim.LiberoEnv` with an environment state, so the rollout's reading is tested without it."""

    def __init__(self, names, max_steps=12):
        self.names, self.max_steps, self.t, self.reads = list(names), max_steps, 0, []
        self.task = self.base_instruction = "move the block to the top left corner"
        self.suite, self.task_id = "fake", 0

    def reset(self, init_index, render=True):
        self.t = 0
        return self.observe()

    def observe(self):
        img = np.zeros((32, 32, 3), np.uint8)
        return {
            "observation.images.image": img,
            "observation.images.wrist_image": img,
            "observation.state": np.zeros(8, np.float32),
            "task": self.task,
        }

    def render(self, key):
        raise AssertionError(f"an env_state policy rendered {key}")

    def environment_state_names(self):
        return self.names

    def environment_state(self):
        self.reads.append(self.t)
        return np.full(len(self.names), self.t, np.float32)

    def step(self, action):
        self.t += 1
        done = self.t >= self.max_steps
        return None, done, False, {"t": self.t}


def test_writer_checks_the_extra_feature_and_config_refuses_a_weights_path(tmp_path):
    from world_modality.config import ConfigError, build_config
    from world_modality.data.writer import LeRobotWriter

    keys = ("observation.images.image", "observation.images.wrist_image")
    ep = dict(
        images={k: np.zeros((3, 8, 8, 3), np.uint8) for k in keys},
        state=np.zeros((3, 8), np.float32),
        action=np.zeros((3, 7), np.float32),
        task="stack the cups",
    )
    w = LeRobotWriter(tmp_path / "ds", image_size=8, use_videos=False, extra_features={ENV_STATE_KEY: ["a.pos.x"]})
    with pytest.raises(ValueError, match="extra keys"):
        w.add_episode(**ep)
    with pytest.raises(ValueError, match=r"\(T,1\)"):
        w.add_episode(**ep, extra={ENV_STATE_KEY: np.zeros((2, 1))})
    with pytest.raises(ValueError, match="NaN"):
        w.add_episode(**ep, extra={ENV_STATE_KEY: np.full((3, 1), np.nan)})
    w.abort()
    with pytest.raises(ConfigError, match="world_encoder_path"):
        build_config({"world_encoder_path": "/models/vjepa"}, preset="E2-State")
