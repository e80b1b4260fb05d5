"""Tests of the success-rate statistics against scipy and hand-computed values."""

import numpy as np
import pytest
from scipy.stats import binomtest

from world_modality.analysis.stats import (
    cluster_bootstrap_diff,
    cluster_sign_flip_test,
    clustered_paired_comparison,
    exact_mcnemar,
    paired_comparison,
    summarize_episodes,
    wilson_interval,
)


@pytest.mark.parametrize("k,n", [(8, 10), (0, 10), (10, 10), (1, 1), (37, 50), (3, 200)])
@pytest.mark.parametrize("conf", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k, n, conf):
    ci = binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    assert wilson_interval(k, n, conf) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_known_value_and_edges():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="must not exceed"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="`n`"):
        wilson_interval(0, -1)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=95)


def test_known_values_of_the_library_tests():
    """The exact McNemar p is a two-sided binomial test on the discordant pairs; Wilson without continuity
    correction."""
    assert exact_mcnemar(5, 5) == 1.0
    assert exact_mcnemar(0, 6) == pytest.approx(0.03125)  # 2 * 0.5**6
    lo, hi = wilson_interval(14, 20)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (48.1, 85.5)


def test_paired_bootstrap_is_seeded_and_handles_one_pair():
    a, b = _pairs(n=40, seed=2)
    assert paired_comparison(a, b, seed=5)["diff_ci"] == paired_comparison(a, b, seed=5)["diff_ci"]
    key = ("libero_spatial", 0, 0)
    assert paired_comparison({key: False}, {key: True})["diff_ci"] == (1.0, 1.0)


def test_mcnemar_known_values():
    assert exact_mcnemar(7, 1) == pytest.approx(0.0703125)
    assert exact_mcnemar(0, 0) == 1.0
    assert exact_mcnemar(3, 3) == 1.0
    assert exact_mcnemar(10, 0) == pytest.approx(2 * 0.5**10)
    for b, c in [(7, 1), (2, 9), (0, 4), (15, 11)]:
        assert exact_mcnemar(b, c) == exact_mcnemar(c, b)
        assert exact_mcnemar(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    with pytest.raises(ValueError, match="`b`"):
        exact_mcnemar(-1, 2)


def _pairs(n=40, seed=1):
    rng = np.random.default_rng(seed)
    keys = [("libero_spatial", t, i) for t in range(4) for i in range(n // 4)]
    a = {k: bool(rng.random() < 0.4) for k in keys}
    b = {k: bool(rng.random() < 0.7) for k in keys}
    return a, b


def test_paired_comparison_counts_and_bootstrap():
    a, b = _pairs()
    b[("libero_spatial", 99, 0)] = True  # unpaired: must be left out
    res = paired_comparison(a, b)
    keys = sorted(a)
    xa = np.array([a[k] for k in keys])
    xb = np.array([b[k] for k in keys])
    assert res["n_pairs"] == 40 and res["unpaired_keys"] == {"a": 0, "b": 1}
    assert res["success_a"] == xa.sum() and res["success_b"] == xb.sum()
    assert res["diff"] == pytest.approx(xb.mean() - xa.mean())
    assert res["b_only"] == np.sum(xb & ~xa) and res["a_only"] == np.sum(xa & ~xb)
    assert res["mcnemar_p"] == exact_mcnemar(res["a_only"], res["b_only"])
    lo, hi = res["diff_ci"]
    assert lo <= res["diff"] <= hi and lo < hi
    assert paired_comparison(a, b)["diff_ci"] == res["diff_ci"]


def test_paired_bootstrap_matches_index_resampling():
    a, b = _pairs(n=200, seed=3)
    res = paired_comparison(a, b, n_boot=20000)
    keys = sorted(a)
    d = np.array([b[k] for k in keys], int) - np.array([a[k] for k in keys], int)
    idx = np.random.default_rng(7).integers(0, len(d), size=(20000, len(d)))
    ref = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    assert res["diff_ci"] == pytest.approx(tuple(ref), abs=0.015)


def test_paired_comparison_identical_and_errors():
    a, _ = _pairs()
    res = paired_comparison(a, a)
    assert res["diff"] == 0 and res["diff_ci"] == (0.0, 0.0) and res["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="a has 40 keys, b has 1"):
        paired_comparison(a, {("x", 0, 0): True})


def test_summarize_episodes():
    recs = (
        [{"suite": "s", "task_id": 0, "task": "pick", "success": True}] * 3
        + [{"suite": "s", "task_id": 0, "task": "pick", "success": False}]
        + [{"suite": "s", "task_id": 1, "success": False}] * 2
        + [{"suite": "t", "task_id": 0, "success": True}]
    )
    s = summarize_episodes(recs)
    assert s["overall"]["n"] == 7 and s["overall"]["k"] == 4
    assert s["per_suite"]["s"]["k"] == 3 and s["per_suite"]["s"]["n"] == 6
    cell = s["per_task"][("s", 0)]
    assert (cell["k"], cell["n"], cell["rate"], cell["task"]) == (3, 4, 0.75, "pick")
    assert cell["ci"] == wilson_interval(3, 4)
    assert s["per_task"][("s", 1)]["rate"] == 0.0
    with pytest.raises(ValueError, match="lacks \\['success'\\]"):
        summarize_episodes([{"suite": "s", "task_id": 0}])
    assert summarize_episodes([])["overall"]["n"] == 0


# --- errored episodes -------------------------------------------------------------------------------------------


def test_summarize_episodes_counts_errors_apart():
    recs = (
        [{"suite": "s", "task_id": 0, "success": True, "outcome": "success"}] * 2
        + [{"suite": "s", "task_id": 0, "success": False, "outcome": "failure", "failure": "timeout"}]
        + [{"suite": "s", "task_id": 0, "success": None, "outcome": "error", "error": "RuntimeError: sim"}] * 2
        + [{"suite": "s", "task_id": 1, "success": None, "outcome": "error", "error": "MemoryError: "}]
        + [{"suite": "t", "task_id": 0, "success": False, "failure": "exception: ValueError: x"}]
    )  # old format
    s = summarize_episodes(recs)
    t0, t1 = s["per_task"][("s", 0)], s["per_task"][("s", 1)]
    assert (t0["k"], t0["n"], t0["errors"], t0["rate"]) == (2, 3, 2, pytest.approx(2 / 3))
    assert t0["ci"] == wilson_interval(2, 3)
    assert (t1["k"], t1["n"], t1["errors"]) == (0, 0, 1) and np.isnan(t1["rate"]) and t1["ci"] == (0.0, 1.0)
    assert (s["per_suite"]["s"]["n"], s["per_suite"]["s"]["errors"]) == (3, 3)
    # An old file's "exception: ..." failure stays a failure: it cannot be told apart any more.
    assert (s["per_suite"]["t"]["n"], s["per_suite"]["t"]["k"], s["per_suite"]["t"]["errors"]) == (1, 0, 0)
    o = s["overall"]
    assert (o["k"], o["n"], o["errors"], o["rate"]) == (2, 4, 3, 0.5) and o["ci"] == wilson_interval(2, 4)
    with pytest.raises(ValueError, match="outcome 'crashed'"):
        summarize_episodes([{"suite": "s", "task_id": 0, "success": None, "outcome": "crashed"}])


def test_paired_comparison_leaves_out_errors_and_counts_them():
    a = {("s", 0, i): v for i, v in enumerate([True, False, False, None, True, None])}
    b = {("s", 0, i): v for i, v in enumerate([True, True, None, True, False, None])} | {("s", 1, 0): True}
    res = paired_comparison(a, b)
    # Pairs 2, 3 and 5 have an error on a side: left out, whatever the other side did.
    assert (res["n_pairs"], res["error_pairs"]) == (3, 3)
    assert (res["success_a"], res["success_b"], res["b_only"], res["a_only"]) == (2, 2, 1, 1)
    assert res["unpaired_keys"] == {"a": 0, "b": 1}
    with pytest.raises(ValueError, match="2 are shared, 2 of them with an error"):
        paired_comparison({1: None, 2: True}, {1: True, 2: None})


# --- pooled over training seeds: clustered test and interval ----------------------------------------------------


def _exact_sign_flip_p(sums) -> float:
    """Reference: the exact null distribution of sum(+-|s_c|) by convolution, P(|T| >= |t|)."""
    x = np.abs(np.asarray(sums, int))
    x = x[x != 0]
    total = int(x.sum())
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0
    for v in x:
        dist = 0.5 * (np.roll(dist, v) + np.roll(dist, -v))  # no wrap-around: the support stays within +-total
    t = abs(int(np.sum(sums)))
    values = np.arange(-total, total + 1)
    return float(dist[np.abs(values) >= t].sum())


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_sign_flip_all_clusters_agree_gives_minimal_p(k):
    sums = [1 + (c % 3) for c in range(k)]  # unequal magnitudes, one sign
    for sign in (1, -1):
        res = cluster_sign_flip_test([sign * v for v in sums] + [0, 0])  # zero clusters carry nothing
        assert res["exact"] and res["n_informative"] == k
        assert res["p"] == pytest.approx(min(1.0, 2 / 2**k), rel=1e-12)


def test_sign_flip_on_one_pair_per_cluster_is_exact_mcnemar():
    rng = np.random.default_rng(5)
    for m in (3, 9, 16):
        d = rng.choice([-1, 0, 1], size=m + 4, p=[0.25, 0.25, 0.5])
        res = cluster_sign_flip_test(d)
        assert res["p"] == pytest.approx(exact_mcnemar(int(np.sum(d == -1)), int(np.sum(d == 1))), rel=1e-9)
    assert cluster_sign_flip_test([0, 0, 0]) == {"p": 1.0, "exact": True, "n_informative": 0, "n_resamples": 1}


def test_sign_flip_monte_carlo_matches_the_exact_distribution():
    rng = np.random.default_rng(11)
    sums = rng.choice([-3, -2, -1, 1, 2, 3], size=40, p=[0.1, 0.1, 0.2, 0.2, 0.2, 0.2])
    res = cluster_sign_flip_test(sums)
    assert not res["exact"] and res["n_resamples"] == 100_000
    ref = _exact_sign_flip_p(sums)
    assert 0.001 < ref < 0.5
    assert res["p"] == pytest.approx(ref, abs=0.004)  # about 4 standard errors at 100,000 draws
    assert cluster_sign_flip_test(sums)["p"] == res["p"]  # fixed seed: the same p every time
    # Exact branch against the same reference, with unequal magnitudes.
    assert cluster_sign_flip_test(sums[:12])["p"] == pytest.approx(_exact_sign_flip_p(sums[:12]), rel=1e-9)


def _replicated(outcomes: dict, seeds: int):
    """The same (E0, E2) outcome per initial state for every training seed."""
    a = {(s, "suite", t, i): o[0] for s in range(seeds) for (t, i), o in outcomes.items()}
    b = {(s, "suite", t, i): o[1] for s in range(seeds) for (t, i), o in outcomes.items()}
    return a, b


# 6 initial states E2 only, 2 E0 only, 4 both succeed, 3 both fail.
CLUSTERS = (
    {(0, i): (False, True) for i in range(6)}
    | {(1, i): (True, False) for i in range(2)}
    | {(2, i): (True, True) for i in range(4)}
    | {(3, i): (False, False) for i in range(3)}
)


def test_replicating_seeds_shrinks_naive_mcnemar_but_not_the_clustered_p():
    one = clustered_paired_comparison(*_replicated(CLUSTERS, 1), lambda k: k[1:])
    assert one["p"] == pytest.approx(exact_mcnemar(2, 6)) and one["p"] > 0.05  # one seed: the two tests agree
    for seeds in (2, 4, 6):
        a, b = _replicated(CLUSTERS, seeds)
        naive = paired_comparison(a, b)
        res = clustered_paired_comparison(a, b, lambda k: k[1:])
        assert (res["n_pairs"], res["n_clusters"], res["n_informative_clusters"]) == (15 * seeds, 15, 8)
        assert res["diff"] == pytest.approx(4 / 15)
        # The naive pooled McNemar treats each seed's repeat as new evidence ...
        assert naive["mcnemar_p"] == pytest.approx(exact_mcnemar(2 * seeds, 6 * seeds))
        if seeds >= 4:
            assert naive["mcnemar_p"] < 0.05
        # ... the clustered test and interval see the same 15 initial states as one seed does.
        assert res["p"] == pytest.approx(one["p"]) and res["p"] > 0.05
        assert res["diff_ci"] == one["diff_ci"]
        assert naive["diff_ci"][1] - naive["diff_ci"][0] < one["diff_ci"][1] - one["diff_ci"][0]
        assert "mcnemar_p" not in res and res["test"].startswith("cluster sign-flip permutation over (suite, task, ")
        assert res["diff_ci_method"].startswith("cluster percentile bootstrap over (suite, task, initial state) (15 ")


def test_cluster_bootstrap_matches_resampling_clusters():
    rng = np.random.default_rng(2)
    d = rng.integers(-3, 4, size=30)
    n = rng.integers(3, 4, size=30) + rng.integers(0, 2, size=30)
    lo, hi = cluster_bootstrap_diff(d, n, n_boot=20000)
    idx = np.random.default_rng(9).integers(0, 30, size=(20000, 30))
    ref = np.quantile(d[idx].sum(axis=1) / n[idx].sum(axis=1), [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(ref), abs=0.01)
    assert lo < d.sum() / n.sum() < hi
    assert all(np.isnan(cluster_bootstrap_diff([2], [3])))  # one cluster: nothing to resample


def test_clustered_comparison_leaves_out_errors():
    a, b = _replicated(CLUSTERS, 2)
    a[(0, "suite", 0, 0)] = None  # seed 0 errored on a start E2 won: that pair only is left out
    res = clustered_paired_comparison(a, b, lambda k: k[1:])
    assert (res["n_pairs"], res["error_pairs"], res["n_clusters"]) == (29, 1, 15)
    assert res["diff"] == pytest.approx(7 / 29)
