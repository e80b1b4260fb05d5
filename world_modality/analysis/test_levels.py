"""levels.py: the clustered cell interval, the two-level (seeds, then starts) contrast, Holm, and the minimum
detectable difference, each against a construction whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from world_modality.analysis.levels import (
    clustered_rate,
    holm,
    minimum_detectable_difference,
    two_level_contrast,
    two_level_draws,
)
from world_modality.analysis.stats import cluster_bootstrap_diff, wilson_interval


def _arm(rows: list[list[int]]) -> dict:
    """{seed i: {start j: success}} from one row of 0/1 per seed."""
    return {i: {j: bool(v) for j, v in enumerate(row)} for i, row in enumerate(rows)}


def _conditional_ci(a: dict, b: dict) -> tuple[float, float]:
    """Today's conditional interval: seeds fixed, clusters (starts) resampled."""
    starts = sorted(set.intersection(*(set(v) for v in (*a.values(), *b.values()))))
    d = [sum(int(b[s][c]) - int(a[s][c]) for s in a if s in b) for c in starts]
    n = [sum(1 for s in a if s in b) for _ in starts]
    return cluster_bootstrap_diff(d, n, n_boot=4000, seed=1)


def test_one_episode_per_start_is_the_plain_wilson_interval():
    rng = np.random.default_rng(0)
    wins = rng.random(60) < 0.3
    c = clustered_rate(wins.astype(int), np.ones(60, dtype=int))
    assert c["design_effect"] == pytest.approx(1.0)
    assert c["ci"] == pytest.approx(list(wilson_interval(int(wins.sum()), 60)), abs=1e-9)


def test_seeds_that_agree_on_every_start_count_each_start_once():
    # 50 starts run by 2 seeds that always agree: 100 episodes, but the evidence of 50.
    wins = np.arange(50) % 5 == 0
    twice = clustered_rate(2 * wins.astype(int), np.full(50, 2))
    once = clustered_rate(wins.astype(int), np.ones(50, dtype=int))
    assert (twice["k"], twice["n"], twice["clusters"]) == (20, 100, 50)
    assert twice["design_effect"] == pytest.approx(2.0)
    assert twice["ci"] == pytest.approx(once["ci"])
    naive = wilson_interval(20, 100)
    assert twice["ci"][1] - twice["ci"][0] > (naive[1] - naive[0]) * 1.3


def test_an_all_failure_cell_takes_the_starts_as_its_trials():
    c = clustered_rate(np.zeros(10, dtype=int), np.full(10, 2))
    assert c["rate"] == 0 and c["ci"][0] == 0 and c["n_eff"] == pytest.approx(10)
    assert c["ci"][1] == pytest.approx(wilson_interval(0, 10)[1])


def test_two_level_interval_is_wider_when_seeds_disagree():
    rng = np.random.default_rng(3)
    starts = 40
    # Arm B's two training runs differ a lot (one learnt the task, one did not); arm A's agree.
    a = _arm([list(rng.random(starts) < 0.3)] * 2)
    b = _arm([list(rng.random(starts) < 0.9), list(rng.random(starts) < 0.1)])
    lo, hi = two_level_contrast(a, b, n_boot=4000, seed=1)["diff_ci"]
    clo, chi = _conditional_ci(a, b)
    assert hi - lo > 1.5 * (chi - clo)


def test_two_level_interval_matches_the_conditional_one_when_seeds_agree():
    rng = np.random.default_rng(4)
    row_a, row_b = list(rng.random(60) < 0.3), list(rng.random(60) < 0.6)
    a, b = _arm([row_a, row_a, row_a]), _arm([row_b, row_b, row_b])
    two = two_level_contrast(a, b, n_boot=4000, seed=1)
    clo, chi = _conditional_ci(a, b)
    assert two["diff_ci"][0] == pytest.approx(clo, abs=0.03) and two["diff_ci"][1] == pytest.approx(chi, abs=0.03)
    assert two["p"] is not None and two["p"] < 0.05  # three seeds per arm: a method-level p is given


def test_seed_i_of_one_arm_is_never_paired_with_seed_i_of_the_other():
    # Both arms: seed 0 fails every start, seed 1 solves every one. Drawing the same seed indices for both arms
    # would make every draw's difference exactly 0; independent draws give -1, -0.5, 0, 0.5 and 1.
    a = b = _arm([[0] * 20, [1] * 20])
    diff, draws = two_level_draws(a, b, n_boot=4000, seed=0)
    assert diff == 0
    assert set(np.round(draws, 6)) == {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert np.mean(draws == 0) == pytest.approx(3 / 8, abs=0.03)  # P(equal seed means) for two 2-of-2 draws
    assert two_level_contrast(a, b, n_boot=4000)["diff_ci"] == pytest.approx([-1.0, 1.0])


def test_the_method_level_p_needs_three_seeds_per_arm():
    a, b = _arm([[0, 1, 0, 0]] * 2), _arm([[1, 1, 1, 0]] * 3)
    res = two_level_contrast(a, b, n_boot=500)
    assert res["p"] is None and res["p_note"] == "p not given: fewer than 3 seeds per arm"


def test_holm_steps_down_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([0.2, 0.3]) == pytest.approx([0.4, 0.4])  # 0.3 alone would stay below 0.4
    assert holm([]) == []


def test_minimum_detectable_difference_solves_the_paired_power_formula():
    from scipy import stats

    psi, n = 0.3, 50
    d = minimum_detectable_difference(psi, n)
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    assert n * d * d == pytest.approx((za * np.sqrt(psi) + zb * np.sqrt(psi - d * d)) ** 2)
    assert minimum_detectable_difference(psi, 4 * n) < d  # more starts detect less
    assert minimum_detectable_difference(0.6, n) > d  # more discordance needs more
    assert minimum_detectable_difference(0.0, n) is None and minimum_detectable_difference(0.3, 2) is None
    # Simulated McNemar-style power at that difference is about 80%.
    rng = np.random.default_rng(0)
    p10, p01 = (psi - d) / 2, (psi + d) / 2
    hits = 0
    for _ in range(2000):
        cells = rng.multinomial(n, [p10, p01, 1 - psi])
        b_, c_ = cells[0], cells[1]
        z = (c_ - b_) / np.sqrt(b_ + c_) if b_ + c_ else 0.0
        hits += abs(z) > za
    assert hits / 2000 == pytest.approx(0.8, abs=0.06)
