"""Success-rate statistics for closed-loop evaluation: Wilson intervals, exact McNemar, paired bootstrap."""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Mapping

import numpy as np
from scipy import stats as sps


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
    z = float(sps.norm.ppf(0.5 + conf / 2))
    denom = n + z * z
    center = (k + z * z / 2) / denom
    half = z / denom * np.sqrt(k * (n - k) / n + z * z / 4)
    # At k=0 or k=n the bound is exactly 0 or 1; rounding could push it just outside.
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (float(lo), float(hi))


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A only) and c (B only)."""
    b = _check_count("b", b)
    c = _check_count("c", c)
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * sps.binom.cdf(min(b, c), n, 0.5)))


def paired_comparison(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool], confidence: float = 0.95,
                      n_boot: int = 10000, seed: int = 0) -> dict:
    """Compare two policies on the episodes they share (same suite, task and initial state).

    diff = rate_b - rate_a; diff_ci is a paired percentile bootstrap over the shared keys.
    """
    conf = _check_confidence(confidence)
    n_boot = _check_count("n_boot", n_boot, minimum=1)
    common = sorted(set(a) & set(b), key=repr)  # repr: keys may mix types, order only needs to be stable
    if not common:
        raise ValueError(f"paired_comparison needs keys present in both results; a has {len(a)} keys, b has {len(b)}, "
                         f"and none are shared (keys should be (suite, task_id, init_index) tuples).")
    xa = np.array([bool(a[k]) for k in common])
    xb = np.array([bool(b[k]) for k in common])
    n = len(common)
    b_only = int(np.sum(xb & ~xa))
    a_only = int(np.sum(xa & ~xb))
    d = xb.astype(int) - xa.astype(int)
    # Each pair's difference is -1, 0 or +1, so resampling n pairs is a multinomial draw over those three
    # outcomes: the same bootstrap distribution as resampling indices, at O(n_boot) cost.
    probs = np.array([np.mean(d == -1), np.mean(d == 0), np.mean(d == 1)])
    counts = np.random.default_rng(seed).multinomial(n, probs / probs.sum(), size=n_boot)
    boot = (counts[:, 2] - counts[:, 0]) / n
    alpha = 1.0 - conf
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {
        "n_pairs": n,
        "success_a": int(xa.sum()),
        "success_b": int(xb.sum()),
        "rate_a": float(xa.mean()),
        "rate_b": float(xb.mean()),
        "diff": float(xb.mean() - xa.mean()),
        "diff_ci": (float(lo), float(hi)),
        "confidence": conf,
        "b_only": b_only,
        "a_only": a_only,
        "mcnemar_p": exact_mcnemar(a_only, b_only),
        "unpaired_keys": {"a": len(a) - n, "b": len(b) - n},
    }


def _cell(k: int, n: int, confidence: float) -> dict:
    lo, hi = wilson_interval(k, n, confidence)
    return {"n": n, "k": k, "rate": k / n if n else float("nan"), "ci": (lo, hi)}


def summarize_episodes(records: list[dict], confidence: float = 0.95) -> dict:
    """Per-task, per-suite and overall success of one condition's episode records.

    Records need "suite", "task_id" and "success"; "task" (the instruction) is kept when present.
    The caller chooses the condition (experiment, memory mode) and removes duplicate episodes first.
    Returns {"overall": cell, "per_suite": {suite: cell}, "per_task": {(suite, task_id): cell + "task"}},
    each cell {"n", "k", "rate", "ci"}.
    """
    per_task: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    per_suite: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    names: dict[tuple, str] = {}
    for i, r in enumerate(records):
        missing = [f for f in ("suite", "task_id", "success") if f not in r]
        if missing:
            raise ValueError(f"episode record {i} lacks {missing}; expected fields suite, task_id, success, got {sorted(r)}.")
        key = (r["suite"], r["task_id"])
        ok = int(bool(r["success"]))
        for acc in (per_task[key], per_suite[r["suite"]]):
            acc[0] += ok
            acc[1] += 1
        if r.get("task") and key not in names:
            names[key] = r["task"]
    k_all = sum(v[0] for v in per_suite.values())
    n_all = sum(v[1] for v in per_suite.values())
    tasks = {}
    for key in sorted(per_task, key=lambda t: (str(t[0]), t[1])):
        tasks[key] = {**_cell(*per_task[key], confidence), "task": names.get(key, "")}
    return {
        "overall": _cell(k_all, n_all, confidence),
        "per_suite": {s: _cell(*per_suite[s], confidence) for s in sorted(per_suite, key=str)},
        "per_task": tasks,
    }
