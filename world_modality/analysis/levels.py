"""Statistics for studies whose runs repeat starts over training seeds (pure numpy/scipy, seeded): a success-rate
interval that counts repeated starts as clustered, the method-level contrast of two arms from a two-level bootstrap
(training seeds, then starts), Holm's adjustment for several contrasts, and the minimum detectable difference of a
paired design.

Two questions have two answers. Conditional on these checkpoints (analysis/pooling.pooled_paired): the trained runs
are fixed and only the starts are resampled. Method level (two_level_contrast): each arm's training seeds are drawn
again too, so the interval also covers what another training run of the same method would have done."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy import optimize
from scipy import stats as sps

CLUSTERED_WILSON = "Wilson interval at the effective n = n / design effect (Kish; clusters = starts)"
TWO_LEVEL = "two-level percentile bootstrap (each arm's training seeds drawn independently, then starts)"
MDD_FORMULA = "n·δ² = (z₀.₉₇₅·√ψ + z₀.₈·√(ψ − δ²))²"
MIN_SEEDS_FOR_P = 3
# Below this many starts (or pairs) a percentile bootstrap is unreliable: over 2 starts it can exclude 0 where the
# exact paired test gives p = 0.5, or have no width at all. The reports say so beside such an interval.
FEW_FOR_BOOTSTRAP = 20

Outcomes = Mapping[Hashable, Mapping[Hashable, bool]]  # {training seed: {start: success}}


def _wilson(p: float, n: float, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed over a (possibly fractional) n."""
    z = sps.norm.ppf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def clustered_rate(cluster_k: Sequence[int], cluster_n: Sequence[int], confidence: float = 0.95) -> dict:
    """Success rate over clusters (a start's episodes, one per training seed) with a design-effect Wilson interval.

    The design effect is the variance of the ratio estimator sum(k)/sum(n) over clusters divided by the binomial
    variance at the same n (Kish); the interval is Wilson's at n / deff. deff is at least 1 (clustering never
    narrows the interval) and at most the largest cluster (every repeat agreeing). At a rate of 0 or 1 the data
    cannot estimate deff; then every cluster counts as one trial (n_eff = number of clusters), the cautious choice.
    Returns {"k", "n", "rate", "ci", "design_effect", "n_eff", "clusters"}.
    """
    k, n = np.asarray(cluster_k, dtype=float), np.asarray(cluster_n, dtype=float)
    keep = n > 0
    k, n = k[keep], n[keep]
    total, wins = float(n.sum()), float(k.sum())
    if total == 0:
        return {"k": 0, "n": 0, "rate": None, "ci": None, "design_effect": None, "n_eff": 0.0, "clusters": 0}
    p = wins / total
    if 0 < p < 1:
        var_cluster = float(np.sum((k - p * n) ** 2)) / total**2
        deff = var_cluster / (p * (1 - p) / total)
        deff = min(max(deff, 1.0), float(n.max()))
    else:
        deff = total / len(n)
    n_eff = total / deff
    return {
        "k": int(wins),
        "n": int(total),
        "rate": p,
        "ci": list(_wilson(p, n_eff, confidence)),
        "design_effect": deff,
        "n_eff": n_eff,
        "clusters": int(len(n)),
    }


def _matrix(arm: Outcomes, starts: list) -> tuple[np.ndarray, np.ndarray]:
    """(successes, finished) as seeds x starts arrays; a start a seed did not finish is 0 in both."""
    seeds = list(arm)
    y = np.zeros((len(seeds), len(starts)))
    m = np.zeros((len(seeds), len(starts)))
    for i, s in enumerate(seeds):
        for j, c in enumerate(starts):
            if c in arm[s]:
                y[i, j], m[i, j] = float(bool(arm[s][c])), 1.0
    return y, m


def two_level_draws(a: Outcomes, b: Outcomes, n_boot: int = 10000, seed: int = 0) -> tuple[float, np.ndarray]:
    """(observed rate_b − rate_a, its n_boot bootstrap draws).

    Each draw takes, for each arm on its own, as many of its training seeds as it has, with replacement (seed i of
    one arm has nothing to do with seed i of the other: they are separate training runs); then one draw of the
    starts both arms finished, with replacement, applied to every seed of both arms, since every run is evaluated
    on those same starts (the pairing by start that the design has is kept). A rate is successes over finished
    episodes of the drawn seeds on the drawn starts.
    """
    if not a or not b:
        raise ValueError(f"two_level_draws needs at least one seed per arm; got {len(a)} and {len(b)}.")
    starts = sorted(set().union(*map(set, a.values())) & set().union(*map(set, b.values())), key=repr)
    if not starts:
        raise ValueError("two_level_draws: the arms share no start.")
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(starts), np.full(len(starts), 1 / len(starts)), size=n_boot).astype(float)
    rates = []
    for arm in (a, b):
        y, m = _matrix(arm, starts)
        u = rng.multinomial(len(arm), np.full(len(arm), 1 / len(arm)), size=n_boot).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = np.sum((u @ y) * w, axis=1) / np.sum((u @ m) * w, axis=1)
        rates.append((float(y.sum() / m.sum()), draws))
    return rates[1][0] - rates[0][0], rates[1][1] - rates[0][1]


def two_level_contrast(a: Outcomes, b: Outcomes, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0) -> dict:
    """The method-level contrast rate_b − rate_a: two_level_draws' percentile interval, and its p-value (twice the
    smaller share of draws on either side of 0, the interval's inversion) only when each arm has at least
    MIN_SEEDS_FOR_P seeds: with fewer, the spread between training runs is not estimable and "p" is None with
    "p_note" saying why."""
    diff, draws = two_level_draws(a, b, n_boot, seed)
    draws = draws[np.isfinite(draws)]  # a draw whose seeds finished none of its starts has no rate
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail]) if len(draws) else (float("nan"), float("nan"))
    enough = min(len(a), len(b)) >= MIN_SEEDS_FOR_P and len(draws) > 0
    p = float(min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0)))) if enough else None
    return {
        "diff": diff,
        "diff_ci": [float(lo), float(hi)],
        "p": p,
        "p_note": None if enough else _why_no_p(a, b),
        "seeds_a": len(a),
        "seeds_b": len(b),
        "method": f"{TWO_LEVEL} ({n_boot} draws, seed {seed})",
    }


def _why_no_p(a: Outcomes, b: Outcomes) -> str:
    if min(len(a), len(b)) < MIN_SEEDS_FOR_P:
        return f"p not given: fewer than {MIN_SEEDS_FOR_P} seeds per arm"
    return "p not given: no bootstrap draw had a rate"


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error); None (no test) stays None and is not counted."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))  # monotone: never below an earlier one
        out[i] = running
    return out


def minimum_detectable_difference(discordance: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest |rate_b − rate_a| a paired design of n independent units detects with this power (two-sided alpha),
    given the measured share ψ of discordant units: the δ solving n·δ² = (z_{1−α/2}·√ψ + z_power·√(ψ − δ²))²
    (paired proportions, Connor 1987). None when ψ is 0 (nothing measured to size it on) or n is too small for any
    δ ≤ √ψ."""
    if not 0 < discordance <= 1 or n < 1:
        return None
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    root = math.sqrt(discordance)

    def gap(d: float) -> float:
        return d * math.sqrt(n) - za * root - zb * math.sqrt(max(discordance - d * d, 0.0))

    if gap(root) <= 0:
        return None
    return float(optimize.brentq(gap, 0.0, root))
