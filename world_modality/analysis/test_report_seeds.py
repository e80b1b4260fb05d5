"""Tests of the report over training seeds: per-seed and pooled success, and the paired comparison pooled over
seeds (clustered test and interval) with its per-seed rows (exact McNemar)."""

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from world_modality.analysis.report import write_report
from world_modality.analysis.stats import clustered_paired_comparison, paired_comparison, wilson_interval
from world_modality.analysis.test_report import SUITE, _assert_png, _episode, _err, _write_jsonl

SWEEP = {
    ("E0", 0): {(t, i): (t + i) % 3 == 0 for t in range(2) for i in range(5)},
    ("E0", 1): {(t, i): i != 4 for t in range(2) for i in range(5)} | {(1, 9): True},
    ("E2", 0): {(t, i): (t + 2 * i) % 4 != 1 for t in range(2) for i in range(5)},
    ("E2", 1): {(t, i): t == 0 for t in range(2) for i in range(5)},
}


def _make_seed_run(root, preset, seed, outcomes, seed_in_config=True):
    run = root / "runs" / f"{preset}-seed{seed}"
    run.mkdir(parents=True)
    train = {"seed": seed} if seed_in_config else {}  # without it, the seed comes from the folder name
    (run / "config.json").write_text(json.dumps({"preset": preset, "policy": {}, "train": train}))
    _write_jsonl(
        run / "metrics.jsonl", [{"kind": "train", "epoch": ep, "action_loss": (1.0 + seed) / ep} for ep in (1, 2)]
    )
    mode = "predicted" if preset == "E2" else "none"
    _write_jsonl(
        run / "eval" / mode / "episodes.jsonl", [_episode(t, i, ok, mode, preset) for (t, i), ok in outcomes.items()]
    )
    return run


def test_report_seed_sweep(tmp_path):
    dirs = [_make_seed_run(tmp_path, p, s, out, seed_in_config=(p, s) != ("E2", 1)) for (p, s), out in SWEEP.items()]
    out = tmp_path / "report"
    res = write_report(dirs[::-1], out)  # folder order does not matter
    md = (out / "report.md").read_text()

    # Per-seed and pooled success, computed here from the outcomes.
    for p in ("E0", "E2"):
        k = sum(sum(SWEEP[(p, s)].values()) for s in (0, 1))
        n = sum(len(SWEEP[(p, s)]) for s in (0, 1))
        pooled = res["pooled"][p]
        assert (pooled["n"], pooled["k"]) == (n, k) and pooled["rate"] == pytest.approx(k / n)
        assert pooled["ci"] == pytest.approx(wilson_interval(k, n))
        rates = [sum(SWEEP[(p, s)].values()) / len(SWEEP[(p, s)]) for s in (0, 1)]
        assert set(pooled["per_seed"]) == {0, 1}
        for s, rate in zip((0, 1), rates):
            assert pooled["per_seed"][s] == {
                "n": len(SWEEP[(p, s)]),
                "k": sum(SWEEP[(p, s)].values()),
                "rate": pytest.approx(rate),
                "errors": 0,
            }
        assert pooled["seed_mean"] == pytest.approx(np.mean(rates))
        assert pooled["seed_std"] == pytest.approx(np.std(rates, ddof=1))
        lo, hi = wilson_interval(k, n)
        assert f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]%" in md
    assert "## Per-seed and pooled results" in md and "| seed 0 | seed 1 |" in md

    # Pooled paired comparison: keys carry the training seed, so seed s of E0 meets seed s of E2 only.
    a = {(s, SUITE, t, i): ok for s in (0, 1) for (t, i), ok in SWEEP[("E0", s)].items()}
    b = {(s, SUITE, t, i): ok for s in (0, 1) for (t, i), ok in SWEEP[("E2", s)].items()}
    common = set(a) & set(b)
    b_only = sum(b[k] and not a[k] for k in common)
    a_only = sum(a[k] and not b[k] for k in common)
    pc = res["paired_pooled"]
    assert (pc["a"], pc["b"], pc["n_pairs"], pc["b_only"], pc["a_only"]) == ("E0", "E2", 20, b_only, a_only)
    assert pc["diff"] == pytest.approx((sum(b[k] for k in common) - sum(a[k] for k in common)) / 20)
    # Pooled: the seeds share initial states, so the test and interval are clustered by (suite, task, init).
    ref = clustered_paired_comparison(a, b, lambda k: k[1:])
    assert "mcnemar_p" not in pc and pc["p"] == ref["p"] and pc["diff_ci"] == ref["diff_ci"]
    assert pc["test"].startswith("cluster sign-flip permutation over (suite, task, initial state) (exact")
    assert pc["diff_ci_method"].startswith(
        "cluster percentile bootstrap over (suite, task, initial state) (10 clusters"
    )
    assert pc["n_clusters"] == 10
    assert pc["unpaired_keys"] == {"a": 1, "b": 0} and pc["error_pairs"] == 0
    crossed = {(1 - k[0], *k[1:]): v for k, v in b.items()}  # E0 seed 0 against E2 seed 1: a different answer
    assert (paired_comparison(a, crossed)["b_only"], paired_comparison(a, crossed)["a_only"]) != (b_only, a_only)
    for s in (0, 1):
        sa, sb = SWEEP[("E0", s)], SWEEP[("E2", s)]
        ks = set(sa) & set(sb)
        d = (sum(sb[k] for k in ks) - sum(sa[k] for k in ks)) / len(ks)
        assert pc["per_seed"][s]["n_pairs"] == 10 and pc["per_seed"][s]["diff"] == pytest.approx(d)
        bs, as_ = sum(sb[k] and not sa[k] for k in ks), sum(sa[k] and not sb[k] for k in ks)
        assert pc["per_seed"][s]["p"] == pytest.approx(binomtest(bs, bs + as_, 0.5).pvalue)
        assert pc["per_seed"][s]["test"] == "exact McNemar (per seed)"
        assert f"| {s} | 10 | {sum(sa[k] for k in ks)} ({100 * sum(sa[k] for k in ks) / 10:.1f}%) |" in md
    assert (
        "Keys that could not be paired (left out): 1 of E0, 0 of E2; pairs left out because an episode ended in an "
        "error on either side: 0; pairs refused for differing protocols: 0."
    ) in md
    assert "## Paired comparison pooled over training seeds" in md and "| exact McNemar (per seed) |" in md
    assert f"| {pc['p']:.4g} | {pc['test']} |" in md and pc["diff_ci_method"] in md
    assert res["paired"] is None and res["compare"] is None and res["compare_pooled"] == ("E0", "E2")

    # Files and figures.
    for name in ("success_pooled.png", "success_overall.png", "training_curves.png"):
        _assert_png(out / name)
    assert "](success_pooled.png)" in md and out / "success_pooled.png" in res["images"]
    assert "E0 (E0-seed0)" in res["experiments"]  # per-run names stay distinct

    # An explicit compare may name presets; the order sets the sign.
    res2 = write_report(dirs, tmp_path / "report2", compare=("E2", "E0"))
    assert res2["paired_pooled"]["a"] == "E2" and res2["paired_pooled"]["diff"] == pytest.approx(-pc["diff"])


def test_report_pooled_over_seeds_leaves_out_errors(tmp_path):
    dirs = [_make_seed_run(tmp_path, p, s, out) for (p, s), out in SWEEP.items()]
    path = dirs[2] / "eval" / "predicted" / "episodes.jsonl"  # E2 seed 0: (0, 0) errored, never finished
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    _write_jsonl(path, [r for r in recs if (r["task_id"], r["init_index"]) != (0, 0)] + [_err(0, 0, "predicted", "E2")])
    res = write_report(dirs, tmp_path / "out")
    pc = res["paired_pooled"]
    assert (pc["n_pairs"], pc["error_pairs"], pc["n_clusters"]) == (19, 1, 10)
    assert pc["per_seed"][0]["error_pairs"] == 1 and pc["per_seed"][0]["n_pairs"] == 9
    assert res["pooled"]["E2"]["errors"] == 1 and res["pooled"]["E2"]["n"] == 19
    md = (tmp_path / "out" / "report.md").read_text()
    assert "pairs left out because an episode ended in an error on either side: 1" in md
    k = sum(SWEEP[("E2", 0)].values()) - SWEEP[("E2", 0)][(0, 0)]
    assert f"{k}/9 = {100 * k / 9:.1f}% (+1 error)" in md
