"""Render profiles in the real simulator: a frame is rendered with the settings of its profile, after every reset
(a hard reset rebuilds the render context with LIBERO's own), and a generated dataset records its profile."""

import json

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import numpy as np
import pytest

from world_modality.sim.env import LiberoEnv
from world_modality.sim.render_profile import PROFILES, PUBLIC_PROFILE, recorded_profile, render_profile

pytestmark = pytest.mark.sim


def _frames(profile: str) -> tuple[list[np.ndarray], list[dict]]:
    frames, settings = [], []
    with LiberoEnv("libero_spatial", 0, image_size=64, render_profile=profile) as env:
        for _ in range(2):  # the second reset rebuilds the render context: the profile must hold again
            env.reset(0, render=False)
            frames.append(env.render())
            settings.append(env.render_settings())
    return frames, settings


def test_each_profile_renders_with_its_recorded_settings():
    out = {name: _frames(name) for name in PROFILES}
    for name, (frames, settings) in out.items():
        p = render_profile(name)
        want = {"msaa_samples": p.msaa_samples, "shadows": p.shadows, "reflections": p.shadows}
        assert settings == [want, want], name
        assert np.array_equal(frames[0], frames[1]), name  # same start, same settings: the same pixels
    # The profiles give other pixels (anti-aliased edges, shadows): the settings above are not vacuous.
    diff = np.abs(out["libero"][0][0].astype(int) - out["fast"][0][0].astype(int))
    assert diff.mean() > 0.5 and diff.max() > 40


def test_unknown_profile_is_refused_before_the_simulator_starts():
    with pytest.raises(ValueError, match=r"unknown render profile 'dark'; expected one of libero, fast"):
        LiberoEnv("libero_spatial", 0, render_profile="dark")


def test_recorded_profile_of_a_dataset():
    assert recorded_profile({}) == recorded_profile({"features": {}}) == PUBLIC_PROFILE == "libero"
    assert recorded_profile({"render_profile": "fast"}) == "fast"
    with pytest.raises(ValueError, match="unknown render profile 'neon'"):
        recorded_profile(json.loads('{"render_profile": "neon"}'))
