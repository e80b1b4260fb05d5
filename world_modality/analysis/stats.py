"""Success-rate statistics for closed-loop evaluation (pure statistics: numpy and scipy, no model code): Wilson
intervals, exact McNemar, paired bootstrap, and for pairs pooled over training seeds a cluster sign-flip permutation
test and a cluster bootstrap, clusters being the (suite, task, initial state) that the seeds share. The tests and
intervals are scipy.stats' own (binomtest, bootstrap, permutation_test). Errored episodes (exceptions, not the
policy's failures) are counted apart and never enter a rate or a comparison."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping

import numpy as np
from scipy import stats as sps

from ..evaluate.episodes import outcome

MCNEMAR_TEST = "exact McNemar"
PAIR_BOOTSTRAP = "paired percentile bootstrap over pairs"
CLUSTER_TEST = "cluster sign-flip permutation over (suite, task, initial state)"
CLUSTER_BOOTSTRAP = "cluster percentile bootstrap over (suite, task, initial state)"


def _check_count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be strictly between 0 and 1, got {confidence!r}.")
    return float(confidence)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (no continuity correction)."""
    k = _check_count("successes", successes)
    n = _check_count("n", n)
    if k > n:
        raise ValueError(f"`successes` ({k}) must not exceed `n` ({n}).")
    conf = _check_confidence(confidence)
    if n == 0:
        return (0.0, 1.0)  # no data: every rate is consistent with it
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    # At k=0 or k=n the bound is exactly 0 or 1; rounding could push it just outside.
    lo = 0.0 if k == 0 else max(0.0, ci.low)
    hi = 1.0 if k == n else min(1.0, ci.high)
    return (float(lo), float(hi))


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A only) and c (B only): a two-sided binomial
    test of b successes in b + c trials at p = 1/2."""
    b = _check_count("b", b)
    c = _check_count("c", c)
    if b + c == 0:
        return 1.0
    return float(min(1.0, sps.binomtest(b, b + c, 0.5).pvalue))


def paired_comparison(
    a: Mapping[Hashable, bool | None],
    b: Mapping[Hashable, bool | None],
    confidence: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict:
    """Compare two policies on the episodes they share (same suite, task and initial state).

    A value of None is an errored episode: a shared key with None on either side is left out and counted in
    "error_pairs". diff = rate_b - rate_a; diff_ci is a paired percentile bootstrap (scipy.stats.bootstrap, seeded)
    of the mean per-pair difference, which treats the usable pairs as independent (right for one training seed;
    pooled seeds need clustered_paired_comparison).
    """
    conf = _check_confidence(confidence)
    n_boot = _check_count("n_boot", n_boot, minimum=1)
    shared = set(a) & set(b)
    errored = {k for k in shared if a[k] is None or b[k] is None}
    common = sorted(shared - errored, key=repr)  # repr: keys may mix types, order only needs to be stable
    if not common:
        raise ValueError(
            f"paired_comparison needs keys present in both results; a has {len(a)} keys, b has {len(b)}, "
            f"{len(shared)} are shared, {len(errored)} of them with an error on a side "
            "(keys should be (suite, task_id, init_index) tuples)."
        )
    xa = np.array([bool(a[k]) for k in common])
    xb = np.array([bool(b[k]) for k in common])
    n = len(common)
    b_only = int(np.sum(xb & ~xa))
    a_only = int(np.sum(xa & ~xb))
    lo, hi = _pair_bootstrap(xb.astype(float) - xa.astype(float), conf, n_boot, seed)
    p = exact_mcnemar(a_only, b_only)
    return {
        "n_pairs": n,
        "success_a": int(xa.sum()),
        "success_b": int(xb.sum()),
        "rate_a": float(xa.mean()),
        "rate_b": float(xb.mean()),
        "diff": float(xb.mean() - xa.mean()),
        "diff_ci": (float(lo), float(hi)),
        "diff_ci_method": f"{PAIR_BOOTSTRAP} ({n_boot} draws, seed {seed})",
        "confidence": conf,
        "b_only": b_only,
        "a_only": a_only,
        "mcnemar_p": p,
        "p": p,
        "test": MCNEMAR_TEST,
        "error_pairs": len(errored),
        "unpaired_keys": {"a": len(a) - len(shared), "b": len(b) - len(shared)},
    }


def _pair_bootstrap(d: np.ndarray, confidence: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(d), resampling pairs; one pair has nothing to resample."""
    if len(d) < 2:
        return (float(d.mean()), float(d.mean()))
    res = sps.bootstrap(
        (d,),
        np.mean,
        vectorized=True,
        n_resamples=n_boot,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
        batch=1000,
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def usable_pairs(a: Mapping[Hashable, bool | None], b: Mapping[Hashable, bool | None]) -> int:
    """Keys in both with a finished (non-error) episode on each side."""
    return sum(1 for k in set(a) & set(b) if a[k] is not None and b[k] is not None)


def cluster_sign_flip_test(cluster_sums, n_resamples: int = 100_000, seed: int = 0) -> dict:
    """Two-sided paired permutation test of "no difference" from each cluster's summed difference (B - A).

    Under the null each cluster's sum is as likely negated, whatever its training seeds share, so signs are flipped
    per cluster: repeated measures within a cluster move together. Clusters summing to 0 carry no information and are
    dropped. Exact over all 2^m sign patterns when that is at most n_resamples, else Monte Carlo with a fixed seed
    (p counts the observed pattern, so it is never 0). Returns {"p", "exact", "n_informative", "n_resamples"}.
    """
    n_resamples = _check_count("n_resamples", n_resamples, minimum=1)
    x = np.asarray(cluster_sums, dtype=float)
    x = x[x != 0]
    m = len(x)
    if m <= 1:  # no sign pattern is more extreme than the observed one (scipy needs two observations)
        return {"p": 1.0, "exact": True, "n_informative": m, "n_resamples": 2**m}
    res = sps.permutation_test(
        (x,),
        lambda v, axis: np.sum(v, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
        batch=20_000,
    )
    exact = 2.0**m <= n_resamples  # scipy enumerates every sign pattern in that case
    return {
        "p": float(min(1.0, res.pvalue)),
        "exact": exact,
        "n_informative": m,
        "n_resamples": 2**m if exact else n_resamples,
    }


def cluster_bootstrap_diff(
    cluster_sums, cluster_pairs, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(d) / sum(n) resampling whole clusters (each cluster's summed difference d
    and its number of pairs n go together). (nan, nan) with fewer than two clusters: nothing to resample."""
    conf = _check_confidence(confidence)
    n_boot = _check_count("n_boot", n_boot, minimum=1)
    d, n = np.asarray(cluster_sums, dtype=float), np.asarray(cluster_pairs, dtype=float)
    if len(d) < 2:
        return (float("nan"), float("nan"))
    res = sps.bootstrap(
        (d, n),
        lambda dd, nn, axis=-1: dd.sum(axis=axis) / nn.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=n_boot,
        confidence_level=conf,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def clustered_paired_comparison(
    a: Mapping[Hashable, bool | None],
    b: Mapping[Hashable, bool | None],
    cluster: Callable[[Hashable], Hashable],
    confidence: float = 0.95,
    n_boot: int = 10000,
    n_perm: int = 100_000,
    seed: int = 0,
) -> dict:
    """paired_comparison's counts, with the p-value and interval that respect clustering: pairs whose keys map to
    one cluster (e.g. several training seeds on one (suite, task, initial state)) are not independent.

    p: cluster_sign_flip_test of the per-cluster summed differences; diff_ci: cluster_bootstrap_diff. "test" and
    "diff_ci_method" name them. No McNemar p: it would count a cluster's seeds as independent evidence.
    """
    base = paired_comparison(a, b, confidence, n_boot, seed)
    sums: dict[Hashable, int] = defaultdict(int)
    pairs: dict[Hashable, int] = defaultdict(int)
    for k in set(a) & set(b):
        if a[k] is None or b[k] is None:
            continue
        c = cluster(k)
        sums[c] += int(bool(b[k])) - int(bool(a[k]))
        pairs[c] += 1
    order = sorted(sums, key=repr)
    d, n = [sums[c] for c in order], [pairs[c] for c in order]
    t = cluster_sign_flip_test(d, n_perm, seed)
    how = (
        f"exact over 2^{t['n_informative']} sign patterns"
        if t["exact"]
        else f"Monte Carlo, {t['n_resamples']} draws, seed {seed}"
    )
    out = {k: v for k, v in base.items() if k not in ("mcnemar_p", "p", "test", "diff_ci", "diff_ci_method")}
    return {
        **out,
        "p": t["p"],
        "p_exact": t["exact"],
        "test": f"{CLUSTER_TEST} ({how}; {t['n_informative']} of {len(order)} clusters with a nonzero sum)",
        "diff_ci": cluster_bootstrap_diff(d, n, confidence, n_boot, seed),
        "diff_ci_method": f"{CLUSTER_BOOTSTRAP} ({len(order)} clusters, {n_boot} draws, seed {seed})",
        "n_clusters": len(order),
        "n_informative_clusters": t["n_informative"],
    }


def _cell(k: int, n: int, errors: int, confidence: float) -> dict:
    lo, hi = wilson_interval(k, n, confidence)
    return {"n": n, "k": k, "rate": k / n if n else float("nan"), "ci": (lo, hi), "errors": errors}


def summarize_episodes(records: list[dict], confidence: float = 0.95) -> dict:
    """Per-task, per-suite and overall success of one condition's episode records.

    Records need "suite", "task_id" and "success" (or "outcome"); "task" (the instruction) is kept when present.
    Errored records (outcome "error") are counted in "errors" and left out of n, k, rate and ci: an exception is
    not the policy's failure. The caller chooses the condition (experiment, memory mode) and resolves duplicate and
    retried episodes first (world_modality.evaluate.episodes.resolve).
    Returns {"overall": cell, "per_suite": {suite: cell}, "per_task": {(suite, task_id): cell + "task"}},
    each cell {"n", "k", "rate", "ci", "errors"}.
    """
    per_task: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])  # successes, finished, errors
    per_suite: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    names: dict[tuple, str] = {}
    for i, r in enumerate(records):
        missing = [f for f in ("suite", "task_id") if f not in r]
        missing += [] if "success" in r or "outcome" in r else ["success"]
        if missing:
            raise ValueError(
                f"episode record {i} lacks {missing}; expected fields suite, task_id, success, got {sorted(r)}."
            )
        key = (r["suite"], r["task_id"])
        out = outcome(r)
        for acc in (per_task[key], per_suite[r["suite"]]):
            if out == "error":
                acc[2] += 1
            else:
                acc[0] += out == "success"
                acc[1] += 1
        if r.get("task") and key not in names:
            names[key] = r["task"]
    totals = [sum(v[j] for v in per_suite.values()) for j in range(3)]
    tasks = {}
    for key in sorted(per_task, key=lambda t: (str(t[0]), t[1])):
        tasks[key] = {**_cell(*per_task[key], confidence), "task": names.get(key, "")}
    return {
        "overall": _cell(*totals, confidence),
        "per_suite": {s: _cell(*per_suite[s], confidence) for s in sorted(per_suite, key=str)},
        "per_task": tasks,
    }
