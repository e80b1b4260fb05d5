"""The evaluation side of a checkpoint without the simulator: device choice, and that a frame rendered at
the dataset's recorded size reaches the model as exactly the pixels training read from the frame cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from world_modality.config import ConfigError
from world_modality.data.fixture import make_fixture_dataset
from world_modality.data.frames import native_frame_sizes, render_size
from world_modality.inference.runner import PolicyRunner
from world_modality.policy.device import resolve_device

NATIVE, SIZE = 48, 32  # the dataset's recorded frame side; the policy's image_size
WORLD = "observation.images.image"
CAMERAS = ("observation.images.image", "observation.images.wrist_image")


@pytest.fixture(scope="module")
def native_run(tmp_path_factory):
    """A tiny E2 trained at 32 px on a dataset recorded at 48 px (as the public 256-px data is read at 128)."""
    from conftest import tiny_config
    from world_modality.train import train

    root = tmp_path_factory.mktemp("native")
    data = make_fixture_dataset(root / "data", n_episodes=4, length=12, image_size=NATIVE, seed=1)
    cfg = tiny_config(data, root / "run", max_epochs=1, image_size=SIZE, world_image_size=SIZE)
    return cfg, train(cfg, progress=False)


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "gpu"):
        with pytest.raises(ConfigError, match=rf"'{bad}'.*auto, cpu, cuda, cuda:N|auto, cpu, cuda, cuda:N.*'{bad}'"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="no CUDA GPU.*--device cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--checkpoint", "CKPT", "--device", "tpu"],
        ["eval-offline", "--checkpoint", "CKPT", "--device", "tpu"],
    ],
)
def test_unknown_device_on_the_command_line_exits_2(argv, tmp_path, capsys):
    from world_modality.cli import main

    argv = [str(tmp_path / "missing") if a == "CKPT" else a for a in argv]
    assert main(argv) == 2  # before the (missing) checkpoint is even looked at
    err = capsys.readouterr().err
    assert "'tpu'" in err and "auto, cpu, cuda, cuda:N" in err and "error:" in err


def test_unknown_device_for_eval_libero_exits_2(tmp_path, capsys):
    from world_modality.eval_libero import main

    assert main(["--checkpoint", str(tmp_path), "--device", "tpu"]) == 2
    assert "'tpu'" in capsys.readouterr().err


def test_checkpoint_records_the_native_frame_size(native_run):
    _, ckpt = native_run
    info = json.loads((ckpt / "policy.json").read_text())["data_info"]
    assert info["frame_size"] == NATIVE
    runner = PolicyRunner(ckpt, device="cpu")
    assert runner.render_sizes == {k: (NATIVE, NATIVE) for k in CAMERAS}
    assert runner.world_frame_size == SIZE


def test_rendered_native_frames_reach_the_model_as_training_pixels(native_run):
    """Evaluation inputs from frames at the recorded size == training inputs read from the frame cache."""
    from world_modality.data.windows import past_frame_rows
    from world_modality.pipeline import FrameSamples, make_collate, prepare_data, window_spec

    cfg, ckpt = native_run
    runner = PolicyRunner(ckpt, device="cpu")
    data = prepare_data(cfg, runner.policy.world_encoder, progress=False)
    ds = data.dataset
    rows = np.array([0, 7, len(ds) - 1])
    samples = FrameSamples(data, rows, cfg.data.image_keys)
    train_batch = make_collate(runner.preprocess)([samples[i] for i in range(len(rows))])
    past = past_frame_rows(ds.episodes, window_spec(cfg))
    cached_world = ds.images(WORLD, SIZE)  # what the latent cache encoded
    native = {k: ds.images(k, None) for k in CAMERAS}  # decoded frames, as the simulator renders them
    assert native[WORLD].shape[1:3] == (NATIVE, NATIVE)
    for i, r in enumerate(rows):
        obs = {k: np.array(native[k][r]) for k in CAMERAS}
        obs.update({"observation.state": ds.state[r], "task": ds.instructions[r]})
        batch = runner.inputs(obs, np.array(native[WORLD][past[r]]))
        assert torch.equal(batch.images[0], train_batch.images[i])
        assert np.array_equal(batch.world_frames[0], cached_world[past[r]])
        with torch.no_grad():
            z = runner.policy.world_encoder.encode(batch.world_frames)[0].numpy()
        np.testing.assert_allclose(z, data.latents.latents[r], rtol=1e-4, atol=1e-5)
        # Without the resize the encoder would see other pixels: the check above is not vacuous.
        with torch.no_grad():
            z_raw = runner.policy.world_encoder.encode(np.array(native[WORLD][past[r]])[None])[0].numpy()
        assert not np.allclose(z_raw, data.latents.latents[r], atol=1e-5)
    assert runner.act(obs, np.array(native[WORLD][past[r]])).shape == (cfg.policy.chunk_size, 7)


def test_checkpoint_without_frame_size_renders_at_image_size(native_run, tmp_path):
    import shutil

    _, ckpt = native_run
    old = shutil.copytree(ckpt, tmp_path / "old")
    meta = json.loads((old / "policy.json").read_text())
    del meta["data_info"]["frame_size"], meta["sha256"]  # saved before either was recorded
    (old / "policy.json").write_text(json.dumps(meta))
    runner = PolicyRunner(old, device="cpu")
    assert runner.render_sizes == {k: (SIZE, SIZE) for k in CAMERAS}
    rng = np.random.default_rng(0)
    obs = {k: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in CAMERAS}
    obs.update({"observation.state": np.zeros(8, np.float32), "task": "move the block"})
    actions = runner.act(obs, rng.integers(0, 256, (runner.num_frames, SIZE, SIZE, 3), dtype=np.uint8))
    assert isinstance(actions, np.ndarray) and actions.dtype == np.float32 and np.isfinite(actions).all()


def test_native_frame_sizes_from_features():
    hwc = {"shape": [256, 256, 3], "names": ["height", "width", "rgb"]}
    assert native_frame_sizes({"a": hwc, "b": hwc}, ["a", "b"]) == 256
    chw = {"shape": [3, 128, 160], "names": ["channels", "height", "width"]}
    sizes = native_frame_sizes({"a": hwc, "b": chw}, ["a", "b", "a"])
    assert sizes == {"a": [256, 256], "b": [128, 160]}
    assert render_size(sizes, "b", 64) == (128, 160) and render_size(256, "b", 64) == (256, 256)
    assert render_size(None, "b", 64) == (64, 64)
    with pytest.raises(ValueError, match="'c'"):
        render_size(sizes, "c", 64)
    with pytest.raises(ValueError, match=r"camera 'a'.*\[height, width, 3\]"):
        native_frame_sizes({"a": {"shape": [256, 256]}}, ["a"])


def test_offline_evaluation_runs_on_the_cpu_device(native_run, tmp_path):
    from world_modality.cli import main

    _, ckpt = native_run
    out = tmp_path / "offline.json"
    assert (
        main(
            [
                "eval-offline",
                "--checkpoint",
                str(ckpt),
                "--device",
                "cpu",
                "--memory",
                "predicted",
                "zero",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["action_mse"]) == {"predicted", "zero"} and np.isfinite(result["action_mse"]["predicted"])
    assert np.isfinite(result["world_mse"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runner_on_the_gpu_acts_like_the_cpu_one(native_run):
    _, ckpt = native_run
    gpu, cpu = PolicyRunner(ckpt, device="auto"), PolicyRunner(ckpt, device="cpu")
    assert gpu.device.type == "cuda" and gpu.policy.world_encoder.device.type == "cuda"
    rng = np.random.default_rng(0)
    obs = {k: rng.integers(0, 256, (NATIVE, NATIVE, 3), dtype=np.uint8) for k in CAMERAS}
    obs.update({"observation.state": np.zeros(8, np.float32), "task": "move the block"})
    frames = rng.integers(0, 256, (gpu.num_frames, NATIVE, NATIVE, 3), dtype=np.uint8)
    a_gpu, a_cpu = gpu.act(obs, frames), cpu.act(obs, frames)
    assert isinstance(a_gpu, np.ndarray) and a_gpu.dtype == np.float32
    np.testing.assert_allclose(a_gpu, a_cpu, rtol=1e-2, atol=1e-2)  # TF32 convolutions on the GPU


def test_closed_loop_shuffle_draws_memories_of_other_instructions_only(native_run):
    """`shuffle` in closed loop: each memory is the true future of a training frame whose instruction is not
    the evaluated task's (the instructions `reset` names); with no other instruction left, any frame's."""
    from world_modality.pipeline import prepare_data, training_memories

    cfg, ckpt = native_run
    runner = PolicyRunner(ckpt, memory_mode="shuffle", device="cpu")
    data = prepare_data(cfg, runner.policy.world_encoder, progress=False)
    ds = data.dataset
    futures = data.latents.latents[data.future_rows]
    # The bank's lighter path reads the same memories as the training pipeline, bit for bit.
    bank, bank_tasks = training_memories(cfg, runner.policy.world_encoder)
    assert np.array_equal(bank, futures[data.train_rows])
    assert bank_tasks == [ds.instructions[r] for r in data.train_rows]
    tasks = sorted(set(ds.instructions))
    assert len(tasks) == 2 and len({ds.instructions[r] for r in data.train_rows}) == 2
    seen = []
    real = runner.policy.memory_latent

    def spy(mode, z_pred, batch, generator=None):
        z = real(mode, z_pred, batch, generator)
        seen.append(z[0].numpy().copy())
        return z

    runner.policy.memory_latent = spy
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (runner.num_frames, NATIVE, NATIVE, 3), dtype=np.uint8)

    def sources_of_draws(task, n=8):
        """The instructions of the training frames whose true futures `act` handed out in n calls."""
        seen.clear()
        obs = {k: rng.integers(0, 256, (NATIVE, NATIVE, 3), dtype=np.uint8) for k in CAMERAS}
        obs.update({"observation.state": np.zeros(8, np.float32), "task": task})
        for _ in range(n):
            runner.act(obs, frames)
        found = []
        for z in seen:
            rows = np.flatnonzero((futures == z).all(axis=1))
            assert rows.size and np.isin(rows, data.train_rows).all(), "a memory that is no training frame's future"
            found.append({ds.instructions[r] for r in rows})
        return set().union(*found)

    for own in tasks:
        # As rollout names them: the simulator's instruction and its base form (here: unknown to the data).
        runner.reset(0, instructions=(f"  {own.upper()} ", "an instruction the dataset does not have"))
        assert sources_of_draws(own) == set(tasks) - {own}
    runner.reset(3, instructions=tasks)  # no other instruction in the bank: every entry is eligible
    assert sources_of_draws(tasks[0], n=16) == set(tasks)
    runner.reset(3)  # the default names no instruction
    drawn = list(seen)
    assert sources_of_draws(tasks[0], n=16) == set(tasks)
    assert all(np.array_equal(a, b) for a, b in zip(seen, drawn))  # seeded by reset


def test_checkpoint_trained_with_another_memory_mode_is_refused(native_run, tmp_path):
    """A run trained with `memory_mode` oracle (the true future in the action path) is not evaluated as
    if it had trained on its predictions: its config no longer loads, and the error names the file."""
    import shutil

    _, ckpt = native_run
    old = shutil.copytree(ckpt, tmp_path / "oracle")
    cfg = json.loads((old / "config.json").read_text())
    cfg["policy"]["memory_mode"] = "oracle"
    (old / "config.json").write_text(json.dumps(cfg))
    needle = r"config\.json: `memory_mode` must be 'predicted' or 'present' in training.*'oracle'"
    with pytest.raises(ConfigError, match=needle):
        PolicyRunner(old, device="cpu")


# --- E2-Present: history without foresight --------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_fixture_dataset(
        tmp_path_factory.mktemp("small") / "data", n_episodes=4, length=12, image_size=SIZE, seed=2
    )


@pytest.fixture(scope="module")
def present_run(small_data, tmp_path_factory):
    from conftest import tiny_config
    from world_modality.train import train

    cfg = tiny_config(small_data, tmp_path_factory.mktemp("present") / "run", preset="E2-Present", max_epochs=1)
    return cfg, train(cfg, progress=False)


def test_e2_present_trains_and_round_trips(present_run):
    from world_modality.config import matching_preset
    from world_modality.policy.checkpoint import load_checkpoint
    from world_modality.policy.training_state import read_trainer_state

    cfg, ckpt = present_run
    assert cfg.policy.memory_mode == "present" and cfg.world.lambda_world == 0 and matching_preset(cfg) == "E2-Present"
    metrics = [json.loads(line) for line in (ckpt.parent.parent / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(metrics[-1]["action_loss"]) and metrics[-1]["loss"] == metrics[-1]["action_loss"]
    a, b = load_checkpoint(ckpt), load_checkpoint(ckpt)
    assert a.cfg.policy.memory_mode == "present" and a.cfg.preset == "E2-Present" and read_trainer_state(ckpt)["step"]
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # No world loss and no prediction in the action path: the Prophet never moved from its copy-last init.
    assert not a.prophet.mlp[-1].weight.any() and not a.prophet.mlp[-1].bias.any()
    assert a.gate() != 0.0  # the memory branch did train


def test_runner_defaults_to_the_checkpoints_training_memory(present_run, native_run):
    from world_modality.evaluate.closed_loop import EvalSettings, eval_folder, resolve_memory
    from world_modality.policy.checkpoint import read_checkpoint_config

    _, ckpt = present_run
    runner = PolicyRunner(ckpt, device="cpu")
    assert runner.memory_mode == "present"
    assert PolicyRunner(ckpt, memory_mode="predicted", device="cpu").memory_mode == "predicted"
    assert PolicyRunner(native_run[1], device="cpu").memory_mode == "predicted"  # an E2 checkpoint
    settings = EvalSettings(checkpoint=str(ckpt), device="cpu")
    assert settings.memory is None
    resolved = resolve_memory(settings, read_checkpoint_config(ckpt))
    assert (
        resolved.memory == "present"
        and eval_folder(ckpt, resolved) == ckpt.parent.parent / "eval" / "libero_spatial-present"
    )
    explicit = EvalSettings(checkpoint=str(ckpt), memory="zero", device="cpu")
    assert resolve_memory(explicit, read_checkpoint_config(ckpt)).memory == "zero"
    e2 = resolve_memory(
        EvalSettings(checkpoint=str(native_run[1]), device="cpu"), read_checkpoint_config(native_run[1])
    )
    assert e2.memory == "predicted" and eval_folder(native_run[1], e2).name == "libero_spatial-predicted"
    # Acting in its trained mode: the memory is the window's own latent z_t.
    seen = {}
    real = runner.policy.memory_latent

    def spy(mode, z_pred, batch, generator=None):
        z = real(mode, z_pred, batch, generator)
        seen.update(mode=mode, memory=z)
        return z

    runner.policy.memory_latent = spy
    rng = np.random.default_rng(0)
    obs = {k: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in CAMERAS}
    obs.update({"observation.state": np.zeros(8, np.float32), "task": "move the block"})
    frames = rng.integers(0, 256, (runner.num_frames, SIZE, SIZE, 3), dtype=np.uint8)
    assert runner.act(obs, frames).shape == (runner.chunk_size, 7) and seen["mode"] == "present"
    with torch.no_grad():
        z_t = runner.policy.world_encoder.encode(runner.inputs(obs, frames).world_frames)
    assert torch.equal(seen["memory"], z_t)


def test_closed_loop_memory_flag_defaults_to_the_checkpoints_mode():
    import argparse

    from world_modality.eval_libero import add_eval_flags, settings_from_args

    p = argparse.ArgumentParser()
    add_eval_flags(p)
    assert settings_from_args(p.parse_args(["--checkpoint", "CKPT"])).memory is None
    assert settings_from_args(p.parse_args(["--checkpoint", "CKPT", "--memory", "present"])).memory == "present"
    with pytest.raises(ConfigError, match="oracle is offline-only"):
        settings_from_args(argparse.Namespace(**{**vars(p.parse_args(["--checkpoint", "C"])), "memory": "oracle"}))


# --- spatial world tokens, encode -> cache -> Prophet -> cross-attention -> action ----------------------
def test_four_world_tokens_from_encoder_to_action(small_data, tmp_path):
    from conftest import tiny_config
    from world_modality.pipeline import prepare_data
    from world_modality.policy.checkpoint import CheckpointError, load_checkpoint
    from world_modality.train import train

    # World frames at 64 px: a 4x4 patch grid pooled to 2x2.
    cfg = tiny_config(small_data, tmp_path / "run", max_epochs=1, world_tokens=4, world_image_size=64)
    ckpt = train(cfg, progress=False)
    policy = load_checkpoint(ckpt)
    enc, d = policy.world_encoder, policy.world_encoder.token_dim
    assert enc.world_tokens == 4 and "-t4-" in enc.encoder_id and policy.shapes.latent_dim == 4 * d
    meta = json.loads((ckpt / "policy.json").read_text())
    assert meta["world_encoder"]["world_tokens"] == 4
    assert json.loads((ckpt / "config.json").read_text())["world"]["world_tokens"] == 4
    data = prepare_data(cfg, enc, progress=False)
    assert data.latents.latents.shape == (len(data.dataset), 4 * d) and data.latents.meta["world_tokens"] == 4
    assert "-t4-" in Path(data.latents.path).name
    n_mem, hidden = cfg.policy.n_memory_tokens, policy.backbone.hidden_size
    assert policy.memory_pos.shape == (4 * n_mem, hidden) and policy.memory_proj.in_features == d
    assert policy.prophet.latent_dim == 4 * d
    runner = PolicyRunner(ckpt, device="cpu")
    seen = {}
    runner.policy.xattn.register_forward_hook(lambda module, args, out: seen.update(memory=args[1]))
    rng = np.random.default_rng(0)
    obs = {k: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in CAMERAS}
    obs.update({"observation.state": np.zeros(8, np.float32), "task": "move the block"})
    actions = runner.act(obs, rng.integers(0, 256, (runner.num_frames, SIZE, SIZE, 3), dtype=np.uint8))
    assert actions.shape == (cfg.policy.chunk_size, 7) and np.isfinite(actions).all()
    assert seen["memory"].shape == (1, 4 * n_mem, hidden)
    # A config.json that claims another N is caught before anything is built.
    import shutil

    edited = shutil.copytree(ckpt, tmp_path / "edited")
    saved = json.loads((edited / "config.json").read_text())
    saved["world"]["world_tokens"] = 1
    (edited / "config.json").write_text(json.dumps(saved))
    with pytest.raises(
        CheckpointError,
        match=r"`world_tokens` is 1, but policy.json records a world encoder of 4 "
        r"spatial token\(s\) per latent",
    ):
        load_checkpoint(edited)


def test_an_e0_checkpoint_refuses_a_memory_mode_before_any_episode(small_data, tmp_path):
    from conftest import tiny_config
    from world_modality.evaluate.closed_loop import EvalSettings, evaluate
    from world_modality.train import train

    ckpt = train(tiny_config(small_data, tmp_path / "e0", preset="E0", max_epochs=1), progress=False)
    assert PolicyRunner(ckpt, device="cpu").memory_mode == "predicted"  # its default: nothing to ablate
    with pytest.raises(ConfigError, match=r"memory mode 'present' needs a policy with future injection.*\(E0\)"):
        evaluate(EvalSettings(checkpoint=str(ckpt), memory="present", device="cpu"), progress=False)
    with pytest.raises(ValueError, match="needs a policy with future injection"):
        PolicyRunner(ckpt, memory_mode="present", device="cpu")


def test_evaluation_inputs_are_not_augmented(native_run):
    """Training shifts images at random (augment_shift); the runner's inputs for one observation are the same
    pixels under any torch seed, the unshifted frame, while a training shift of them differs."""
    from world_modality.pipeline import random_shift

    cfg, ckpt = native_run
    assert cfg.train.augment_shift > 0
    runner = PolicyRunner(ckpt, device="cpu")
    rng = np.random.default_rng(3)
    obs = {k: rng.integers(0, 256, (NATIVE, NATIVE, 3), dtype=np.uint8) for k in CAMERAS}
    obs.update({"observation.state": np.zeros(8, np.float32), "task": "move the block"})
    world = rng.integers(0, 256, (runner.num_frames, NATIVE, NATIVE, 3), dtype=np.uint8)
    seen = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        seen.append(runner.inputs(obs, world).images)
    assert all(torch.equal(seen[0], s) for s in seen[1:])
    assert torch.equal(seen[0], runner.preprocess([obs]).images)
    torch.manual_seed(0)
    assert not torch.equal(random_shift(seen[0], cfg.train.augment_shift), seen[0])


def test_render_profile_travels_from_the_dataset_to_evaluation(native_run, tmp_path):
    """A dataset recording no profile (public data) trains a policy rendered with LIBERO's settings; a policy whose
    data recorded `fast` is evaluated with `fast`, and asking for another profile is refused naming both."""
    import shutil

    from world_modality.evaluate.closed_loop import policy_render_profile

    _, ckpt = native_run
    assert json.loads((ckpt / "policy.json").read_text())["data_info"]["render_profile"] == "libero"
    assert PolicyRunner(ckpt, device="cpu").render_profile == "libero"
    assert policy_render_profile(ckpt, None) == "libero"
    fast = shutil.copytree(ckpt, tmp_path / "fast")
    meta = json.loads((fast / "policy.json").read_text())
    meta["data_info"]["render_profile"] = "fast"
    del meta["sha256"]  # as if trained on fast frames: no stale hash of the edited field
    (fast / "policy.json").write_text(json.dumps(meta))
    assert PolicyRunner(fast, device="cpu").render_profile == "fast"
    assert policy_render_profile(fast, None) == policy_render_profile(fast, "fast") == "fast"
    with pytest.raises(ConfigError, match=r"'libero' differs from 'fast'.*policy\.json"):
        policy_render_profile(fast, "libero")
    with pytest.raises(ValueError, match="unknown render profile 'dim'"):
        policy_render_profile(fast, "dim")


# --- temporal ensembling (ACT) of overlapping chunks --------------------------------------------------------
def _recording(runner) -> list[np.ndarray]:
    """Every chunk `runner.act` returns from now on, in order (the instance's act wrapped)."""
    chunks = []
    real = runner.act

    def act(observation, world_frames=None):
        chunk = real(observation, world_frames)
        chunks.append(chunk.copy())
        return chunk

    runner.act = act
    return chunks


def _drive(runner, frames: int, seed: int = 0, only_needed: bool = False) -> tuple[list[np.ndarray], list[bool]]:
    """An episode of random observations: (each frame's action, whether the runner asked for its observation).
    only_needed: pass the observation and world frame only when the runner says it needs them."""
    rng = np.random.default_rng(seed)
    runner.reset(seed, instructions="move the block")
    actions, asked = [], []
    for _ in range(frames):
        obs = {k: rng.integers(0, 256, (NATIVE, NATIVE, 3), dtype=np.uint8) for k in CAMERAS}
        obs.update({"observation.state": rng.normal(size=8).astype(np.float32), "task": "move the block"})
        asked.append(runner.needs_observation)
        world = obs[WORLD] if runner.needs_world_frame or not only_needed else None
        actions.append(runner.select_action(obs if asked[-1] or not only_needed else None, world))
    return actions, asked


def _ensemble(chunks: list[tuple[int, np.ndarray]], frame: int, m: float) -> np.ndarray:
    """ACT's weighted mean, by hand: chunks (first frame, actions) covering `frame`, i = 0 the oldest."""
    covering = [c[frame - start] for start, c in chunks if start <= frame < start + len(c)]
    weights = [np.exp(-m * i) for i in range(len(covering))]
    return sum(w * a.astype(np.float64) for w, a in zip(weights, covering)) / sum(weights)


def test_temporal_ensemble_off_acts_as_before(native_run):
    """None is today's runner bit for bit: the first replan_every rows of each chunk, in turn."""
    _, ckpt = native_run
    plain, off = PolicyRunner(ckpt, device="cpu"), PolicyRunner(ckpt, device="cpu", temporal_ensemble=None)
    assert off.temporal_ensemble is None
    chunks = _recording(off)
    a_plain, asked_plain = _drive(plain, 12)
    a_off, asked_off = _drive(off, 12)
    assert asked_plain == asked_off and all(np.array_equal(a, b) for a, b in zip(a_plain, a_off))
    r = off.replan_every
    assert all(np.array_equal(a, chunks[f // r][f % r]) for f, a in enumerate(a_off))


@pytest.mark.parametrize("m", [0.01, 0.5])
def test_temporal_ensemble_is_the_weighted_mean_of_the_covering_chunks(native_run, m):
    """replan_every=1 is ACT's scheme: each frame's action is the exp(-m i)-weighted mean (i = 0 the oldest) of
    what every chunk predicted so far says for it, and not the newest chunk's own first action."""
    _, ckpt = native_run
    runner = PolicyRunner(ckpt, device="cpu", temporal_ensemble=m)
    runner.binary_gripper = False  # the gripper's snapping is checked below
    chunks = _recording(runner)
    runner.reset(0, replan_every=1)
    frames = runner.chunk_size + 4  # past the first chunk's end: the oldest ones drop out
    actions, asked = _drive(runner, frames)
    assert all(asked) and len(chunks) == frames
    started = list(enumerate(chunks))
    for f, a in enumerate(actions):
        np.testing.assert_allclose(a, _ensemble(started, f, m), rtol=1e-5, atol=1e-6)
    # Not vacuous: the ensemble is not the plain runner's action (this frame's first row), and the order matters.
    assert not np.allclose(actions[-1], chunks[-1][0], atol=1e-4)
    if m > 0.1:
        newest_first = [(f, c) for f, c in reversed(started)]
        assert not np.allclose(actions[-1], _ensemble(newest_first, frames - 1, m), atol=1e-4)


def test_temporal_ensemble_snaps_a_binary_gripper_after_the_mean(native_run):
    _, ckpt = native_run
    runner = PolicyRunner(ckpt, device="cpu", temporal_ensemble=0.3)
    runner.binary_gripper = True  # as a checkpoint trained on +-1 grippers: act snaps each chunk
    chunks = _recording(runner)
    runner.reset(0, replan_every=1)
    actions, _ = _drive(runner, runner.chunk_size + 2)
    for f, a in enumerate(actions):
        expected = _ensemble(list(enumerate(chunks)), f, 0.3)
        assert a[-1] == (1.0 if expected[-1] >= 0 else -1.0)
        np.testing.assert_allclose(a[:-1], expected[:-1], rtol=1e-5, atol=1e-6)


def test_temporal_ensemble_asks_for_inputs_only_on_replanning_frames(native_run):
    """Observations are needed exactly on replanning frames and world frames exactly where a window reaches them
    (a missing one would raise); kept world frames stay bounded; replan_every = chunk_size has nothing to
    blend, so it acts as the plain runner; reset drops the stored chunks."""
    from world_modality.inference.schedule import is_replan_frame, is_world_frame

    _, ckpt = native_run
    runner = PolicyRunner(ckpt, device="cpu", temporal_ensemble=0.01)
    plain = PolicyRunner(ckpt, device="cpu")
    chunk, m, s = runner.chunk_size, runner.num_frames, runner.frame_stride
    for replan in sorted({1, 3, max(1, chunk // 2), chunk}):
        chunks = _recording(runner)
        runner.reset(0, replan_every=replan)
        rng = np.random.default_rng(replan)
        for f in range(3 * chunk):
            assert runner.needs_observation == is_replan_frame(f, replan), (replan, f)
            assert runner.needs_world_frame == is_world_frame(f, replan, m, s), (replan, f)
            obs = {k: rng.integers(0, 256, (NATIVE, NATIVE, 3), dtype=np.uint8) for k in CAMERAS}
            obs.update({"observation.state": np.zeros(8, np.float32), "task": "move the block"})
            runner.select_action(
                obs if runner.needs_observation else None, obs[WORLD] if runner.needs_world_frame else None
            )
            assert len(runner._world) <= (m - 1) * s + replan + 1
            assert len(runner._chunks) <= -(-chunk // replan)
        assert len(chunks) == -(-3 * chunk // replan)
        del runner.act  # the recording wrapper: the next replan_every records its own
    runner.reset(0, replan_every=chunk)
    plain.reset(0, replan_every=chunk)
    a_ens, asked_ens = _drive(runner, 2 * chunk + 1, only_needed=True)
    a_plain, asked_plain = _drive(plain, 2 * chunk + 1, only_needed=True)
    assert asked_ens == asked_plain and all(np.array_equal(a, b) for a, b in zip(a_ens, a_plain))
    runner.reset(0, replan_every=1)
    _drive(runner, 3)
    runner.reset(0)
    assert runner._chunks == [] and runner.needs_observation


@pytest.mark.parametrize("bad", [-1, -0.01, float("nan"), float("inf"), True, "0.01"])
def test_a_bad_temporal_ensemble_is_refused_naming_it(bad, tmp_path):
    from world_modality.evaluate.closed_loop import EvalSettings
    from world_modality.inference.remote import RemoteRunner

    named = rf"temporal_ensemble must be a finite number >= 0.*got {repr(bad)}"
    with pytest.raises(ValueError, match=named):
        PolicyRunner(tmp_path / "never-loaded", device="cpu", temporal_ensemble=bad)  # before the checkpoint loads
    with pytest.raises(ConfigError, match=named):
        EvalSettings(checkpoint="runs/e2", temporal_ensemble=bad)
    with pytest.raises(ValueError, match=named):
        RemoteRunner("127.0.0.1:1", temporal_ensemble=bad)  # before connecting
    assert EvalSettings(checkpoint="runs/e2", temporal_ensemble=0).temporal_ensemble == 0


def test_temporal_ensemble_flag_reaches_the_settings_and_a_bad_one_exits_2(tmp_path, capsys):
    import argparse

    from world_modality.eval_libero import add_eval_flags, main, settings_from_args

    p = argparse.ArgumentParser()
    add_eval_flags(p)
    assert settings_from_args(p.parse_args(["--checkpoint", "C"])).temporal_ensemble is None
    args = p.parse_args(["--checkpoint", "C", "--temporal_ensemble", "0.01"])
    assert settings_from_args(args).temporal_ensemble == 0.01
    assert main(["--checkpoint", str(tmp_path), "--temporal_ensemble", "nan"]) == 2
    assert "got nan" in capsys.readouterr().err


def test_eval_identity_names_the_temporal_ensemble_only_when_set(native_run, tmp_path):
    """Folders evaluated before the option keep their identity (no key); a set ensemble is another evaluation."""
    from world_modality.evaluate.closed_loop import EvalSettings
    from world_modality.evaluate.folder import check_same_evaluation, eval_identity

    _, ckpt = native_run
    base = dict(checkpoint=str(ckpt), memory="predicted", render_profile="libero", device="cpu")
    off = eval_identity(ckpt, EvalSettings(**base), 4, 220)
    assert "temporal_ensemble" not in off
    assert off == eval_identity(ckpt, EvalSettings(**base, temporal_ensemble=None), 4, 220)
    on = eval_identity(ckpt, EvalSettings(**base, temporal_ensemble=0.01), 4, 220)
    assert on == {**off, "temporal_ensemble": 0.01}
    out = tmp_path / "eval"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"identity": off}))
    (out / "episodes.jsonl").write_text(json.dumps({"task_id": 0, "init_index": 0, "success": True}) + "\n")
    check_same_evaluation(out, off, out / "episodes.jsonl")  # without the option: the folder continues
    with pytest.raises(ConfigError, match=r"temporal_ensemble: not recorded there, 0.01 now"):
        check_same_evaluation(out, on, out / "episodes.jsonl")


def test_worker_and_remote_runner_ensemble_like_the_local_runner(native_run):
    """The worker builds its runner with the setting, local or over a policy server, and a RemoteRunner blends
    the server's chunks as the local runner blends its own, bit for bit (the gripper snapped alike)."""
    from world_modality.evaluate import worker
    from world_modality.inference.remote import RemoteRunner
    from world_modality.serve.batched import BatchedPolicy
    from world_modality.serve.server import PolicyServer

    _, ckpt = native_run
    server = PolicyServer(BatchedPolicy(PolicyRunner(ckpt, device="cpu", seed=0)), port=0)
    port = server.start()
    threads = torch.get_num_threads()  # a worker sets its process to one thread; this process is the tests'
    try:
        settings = {"checkpoint": str(ckpt), "memory": None, "seed": 0, "device": "cpu", "temporal_ensemble": 0.2}
        worker._init(settings)
        assert worker._STATE["runner"].temporal_ensemble == 0.2
        worker._STATE.clear()
        worker._init({**settings, "policy_server": f"127.0.0.1:{port}"})
        remote = worker._runner()
        assert isinstance(remote, RemoteRunner) and remote.temporal_ensemble == 0.2
        local = PolicyRunner(ckpt, device="cpu", seed=0, temporal_ensemble=0.2)
        assert remote.binary_gripper == local.binary_gripper
        for runner in (local, remote):
            runner.reset(3, replan_every=2)
        a_local, asked_local = _drive(local, 2 * local.chunk_size, seed=3, only_needed=True)
        a_remote, asked_remote = _drive(remote, 2 * local.chunk_size, seed=3, only_needed=True)
        assert asked_local == asked_remote
        assert all(np.array_equal(a, b) for a, b in zip(a_local, a_remote))
        remote.close()
    finally:
        worker._STATE.clear()
        server.stop()
        torch.set_num_threads(threads)
