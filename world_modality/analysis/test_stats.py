"""Tests of the success-rate statistics against scipy and hand-computed values."""

import numpy as np
import pytest
from scipy.stats import binomtest

from world_modality.analysis.stats import exact_mcnemar, paired_comparison, summarize_episodes, wilson_interval


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
    recs = ([{"suite": "s", "task_id": 0, "task": "pick", "success": True}] * 3
            + [{"suite": "s", "task_id": 0, "task": "pick", "success": False}]
            + [{"suite": "s", "task_id": 1, "success": False}] * 2
            + [{"suite": "t", "task_id": 0, "success": True}])
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
