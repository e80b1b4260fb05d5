"""Shared pytest fixtures: a small synthetic LeRobot dataset and a trained tiny E2 run."""

import pytest

from world_modality.config import build_config
from world_modality.data.fixture import make_fixture_dataset


@pytest.fixture(scope="session")
def fixture_dataset(tmp_path_factory):
    return make_fixture_dataset(tmp_path_factory.mktemp("data") / "fixture", n_episodes=12, length=24, image_size=32, n_tasks=2, seed=0)


def tiny_config(dataset, out, preset="E2", **overrides):
    """The embedded default shrunk for tests: 32-px images, few epochs."""
    base = {"dataset": str(dataset), "image_size": 32, "world_image_size": 32, "output_dir": str(out), "max_epochs": 2,
            "batch_size": 8, "tensorboard": False}
    base.update(overrides)
    return build_config(base, preset=preset)


@pytest.fixture(scope="session")
def trained_e2(fixture_dataset, tmp_path_factory):
    from world_modality.train import train

    cfg = tiny_config(fixture_dataset, tmp_path_factory.mktemp("runs") / "e2", max_epochs=4)
    return train(cfg, progress=False)
