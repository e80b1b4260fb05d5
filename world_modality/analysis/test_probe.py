"""The linear probe: it recovers a known linear signal, scores about 0 on noise, never splits an episode."""

import numpy as np
import pytest

from world_modality.analysis.probe import episode_split, probe_arrays


def _synthetic(seed: int, signal: bool):
    rng = np.random.default_rng(seed)
    n_eps, per = 20, 30
    episodes = np.repeat(np.arange(n_eps), per)
    positions = rng.normal(size=(n_eps * per, 6))  # two objects, x y z each
    mix = rng.normal(size=(6, 32))
    x = positions @ mix + 0.01 * rng.normal(size=(n_eps * per, 32)) if signal else rng.normal(size=(n_eps * per, 32))
    names = [f"{o}.pos.{c}" for o in ("bowl_1", "plate_1") for c in "xyz"]
    objects = {"bowl_1": [0, 1, 2], "plate_1": [3, 4, 5]}
    train, test = episode_split(episodes, 0.25, seed)
    return x, positions, names, objects, episodes, train, test


def test_the_probe_recovers_a_known_linear_signal():
    r = probe_arrays(*_synthetic(0, signal=True))
    assert r["present"]["overall"] > 0.99 and all(v > 0.99 for v in r["present"]["objects"].values())


def test_the_probe_scores_about_zero_on_noise():
    r = probe_arrays(*_synthetic(1, signal=False))
    assert r["present"]["overall"] < 0.05


def test_the_episode_split_never_puts_an_episode_on_both_sides():
    episodes = np.repeat(np.arange(7), 5)
    keep, held = episode_split(episodes, 0.3, seed=3)
    assert set(episodes[keep]).isdisjoint(episodes[held]) and len(keep) + len(held) == len(episodes)
    x, positions, names, objects, eps, train, test = _synthetic(2, signal=True)
    with pytest.raises(ValueError, match="share an episode"):
        probe_arrays(x, positions, names, objects, eps, train, np.concatenate([test, train[:1]]))
