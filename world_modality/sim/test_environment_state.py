"""The privileged environment state in the real simulator: recorded by generation, read back identically by
evaluation from the same start, and an E2-State policy trained on it acting in closed loop."""

import json

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import numpy as np
import pytest

from world_modality.data.env_state import ENV_STATE_KEY, read_env_state  # noqa: E402
from world_modality.data.lerobot import load_dataset  # noqa: E402

pytestmark = [pytest.mark.sim, pytest.mark.slow]

# libero_spatial task 0: five movable objects (7 pose values each), then the cabinet's three drawers and the
# stove's button (one position each), objects and joints sorted by name.
SPATIAL_OBJECTS = ["akita_black_bowl_1", "akita_black_bowl_2", "cookies_1", "glazed_rim_porcelain_ramekin_1", "plate_1"]
SPATIAL_JOINTS = [
    "flat_stove_1.button.qpos",
    "wooden_cabinet_1.bottom_level.qpos",
    "wooden_cabinet_1.middle_level.qpos",
    "wooden_cabinet_1.top_level.qpos",
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from world_modality.sim.generate import generate

    out = tmp_path_factory.mktemp("gen_state") / "spatial"
    return generate("libero_spatial", [0], 1, out, image_size=32, workers=1, seed=0, progress=False, job_timeout_s=300)


def test_generation_records_the_state_and_evaluation_reads_it_back_identically(generated):
    from world_modality.data.starts import read_training_starts
    from world_modality.sim.env import LiberoEnv

    info = json.loads((generated / "meta" / "info.json").read_text())
    names = info["features"][ENV_STATE_KEY]["names"]
    fields = ["pos.x", "pos.y", "pos.z", "quat.w", "quat.x", "quat.y", "quat.z"]
    assert names == [f"{o}.{f}" for o in SPATIAL_OBJECTS for f in fields] + SPATIAL_JOINTS
    assert info["features"][ENV_STATE_KEY]["shape"] == [39]
    ds = load_dataset(generated)
    values, _ = read_env_state(ds)
    assert values.shape == (len(ds), 39)
    quats = values[:, :35].reshape(len(ds), 5, 7)[..., 3:]
    np.testing.assert_allclose(np.linalg.norm(quats, axis=-1), 1.0, atol=1e-4)  # unit quaternions
    moved = np.abs(values[-1, :35] - values[0, :35]).reshape(5, 7)[:, :3].max(1)
    assert moved.max() > 0.05  # the expert carried one object several centimetres

    start = np.asarray(read_training_starts(generated)["states"][0]["sim_state"])
    with LiberoEnv("libero_spatial", 0, image_size=32) as env:
        env.reset(start_state=start, render=False)  # the demonstration's start, then the same settle steps
        assert env.environment_state_names() == names
        state = env.environment_state()
    assert state.dtype == np.float32
    np.testing.assert_allclose(state, values[0], atol=1e-6)


def test_e2_state_trains_on_generated_data_and_its_runner_acts_in_the_simulator(generated, tmp_path):
    from conftest import tiny_config
    from world_modality.data.starts import read_training_starts
    from world_modality.evaluate.rollout import run_episode
    from world_modality.inference.runner import PolicyRunner
    from world_modality.sim.env import LiberoEnv
    from world_modality.train import train

    ckpt = train(tiny_config(generated, tmp_path / "e2s", preset="E2-State", max_epochs=1), progress=False)
    runner = PolicyRunner(ckpt, device="cpu")
    assert runner.world_key == ENV_STATE_KEY and runner.policy.shapes.latent_dim == 4 * 39
    ds = load_dataset(generated)
    values, _ = read_env_state(ds)
    with LiberoEnv(
        "libero_spatial", 0, image_size=runner.cfg.data.image_size, camera_sizes=runner.render_sizes, max_steps=8
    ) as env:
        env.reset(start_state=np.asarray(read_training_starts(generated)["states"][0]["sim_state"]), render=False)
        np.testing.assert_allclose(runner.world_input(env), values[0], atol=1e-6)  # what training saw at frame 0
        result = run_episode(env, runner, 0, replan_every=4)
    assert result["failure"] in (None, "timeout") and 0 < result["steps"] <= 8
