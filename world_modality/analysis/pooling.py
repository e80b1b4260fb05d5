"""Multi-seed sweeps in the report: per-seed and pooled closed-loop success, and the paired comparison pooled over
training seeds. A run's experiment is its config "preset"; its training seed is config train.seed (else "seed<N>"
in the folder name, else the folder name). Runs that share a preset are seeds of one experiment.

Every seed is evaluated on the same (suite, task, initial state) episodes, so pooled pairs are clustered by those:
the pooled p-value is a cluster sign-flip permutation test and the pooled interval a cluster bootstrap
(stats.clustered_paired_comparison); the exact McNemar test is kept per seed, where pairs are one per cluster.
Pure statistics over loaded runs: no plotting, no model code (the report's sections and tables show the results)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from ..evaluate.episodes import outcome
from .stats import clustered_paired_comparison, paired_comparison, usable_pairs, wilson_interval


def _seed_order(e: dict) -> tuple:
    seed = e.get("seed")
    return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed))


def seed_key(seed) -> tuple:
    """Sort key of a training seed: numbers in order, then names."""
    return _seed_order({"seed": seed})


def pair_keys(episodes: list[dict], errors: list[dict] = ()) -> tuple[dict, int]:
    """(suite, task_id, init_index) -> success, or None where that initial state only ended in errors (so the pair
    is left out and counted as such); several seeds at one initial state keep the lowest seed that finished."""
    out, extra = {}, 0
    for e in sorted(episodes, key=_seed_order):
        key = (e["suite"], e["task_id"], e["init_index"])
        if key in out:
            extra += 1
            continue
        out[key] = outcome(e) == "success"
    for e in errors:
        out.setdefault((e["suite"], e["task_id"], e["init_index"]), None)
    return out, extra


def cluster_of(key: tuple) -> tuple:
    """A pooled pair's cluster: its (suite, task_id, init_index), whatever the training seed."""
    return key[1:]


def training_seed(run: dict):
    """config train.seed, else the number after "seed" in the folder name, else the folder name."""
    train = run["config"].get("train")
    seed = train.get("seed") if isinstance(train, dict) else None
    if seed is None:
        m = re.search(r"seed[_-]?(\d+)", run["dir"].name, re.IGNORECASE)
        seed = int(m.group(1)) if m else run["dir"].name
    return seed


def assign_seeds(runs: list[dict]) -> bool:
    """Set run["train_seed"] (made unique within a preset) and return whether some preset has more than one run."""
    seen: set = set()
    for r in runs:
        seed = training_seed(r)
        if (r["preset"], seed) in seen:  # a second run of one preset and seed: kept apart, and so never paired
            seed = f"{seed} ({r['dir'].name})"
        seen.add((r["preset"], seed))
        r["train_seed"] = seed
    return max(Counter(r["preset"] for r in runs).values(), default=0) > 1


def _presets(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["preset"] for r in runs if evaluated(r)))


def evaluated(run: dict) -> bool:
    """Whether a run has headline-mode episodes, finished or errored."""
    return bool(run["head"] or run.get("head_errors"))


def pool_runs(runs: list[dict]) -> dict:
    """{preset: {n, k, rate, ci, errors, per_seed: {seed: {n, k, rate, errors}}, seed_mean, seed_std, memory}} over
    headline episodes; errored episodes are counted in errors, never in n or a rate."""
    out = {}
    for p in _presets(runs):
        rs = sorted((r for r in runs if r["preset"] == p and evaluated(r)), key=lambda r: seed_key(r["train_seed"]))
        per_seed = {r["train_seed"]: {k: r["summary"]["overall"][k] for k in ("n", "k", "rate", "errors")} for r in rs}
        n, k = sum(c["n"] for c in per_seed.values()), sum(c["k"] for c in per_seed.values())
        rates = [c["rate"] for c in per_seed.values() if c["n"]]
        out[p] = {
            "n": n,
            "k": k,
            "rate": k / n if n else float("nan"),
            "ci": wilson_interval(k, n),
            "errors": sum(c["errors"] for c in per_seed.values()),
            "per_seed": per_seed,
            "seed_mean": float(np.mean(rates)) if rates else float("nan"),
            "seed_std": float(np.std(rates, ddof=1)) if len(rates) > 1 else None,
            "memory": sorted({r["mode"] for r in rs}, key=str),
        }
    return out


def choose_pooled_pair(runs: list[dict], compare: tuple[str, str] | None) -> tuple[str, str] | None:
    """The two presets to compare: compare's (a run name stands for its preset), else E0 and E2, else E0 and the
    first other, else the first two."""
    presets = _presets(runs)
    if compare is not None:
        by_name = {r["name"]: r["preset"] for r in runs}
        a, b = (c if c in presets else by_name.get(c) for c in compare)
        return (a, b) if a in presets and b in presets and a != b else None
    if "E0" in presets and "E2" in presets:
        return ("E0", "E2")
    if "E0" in presets and len(presets) >= 2:  # E0 is the baseline, as in the per-run comparison
        return ("E0", next(p for p in presets if p != "E0"))
    return tuple(presets[:2]) if len(presets) >= 2 else None


def pooled_paired(runs: list[dict], pair: tuple[str, str]) -> dict | None:
    """Pairs keyed by (training seed, suite, task_id, init_index): pooled, clustered_paired_comparison with clusters
    (suite, task_id, init_index); per training seed, paired_comparison (exact McNemar). Errors are left out."""
    sides, extra = [{}, {}], [0, 0]
    for i, p in enumerate(pair):
        for r in runs:
            if r["preset"] == p and evaluated(r):
                keys, x = pair_keys(r["head"], r.get("head_errors", []))
                sides[i].update({(r["train_seed"], *k): v for k, v in keys.items()})
                extra[i] += x
    a, b = sides
    if not usable_pairs(a, b):
        return None
    per_seed = {}
    for s in sorted({k[0] for k in a} & {k[0] for k in b}, key=seed_key):
        sa, sb = ({k: v for k, v in d.items() if k[0] == s} for d in (a, b))
        if usable_pairs(sa, sb):
            pc = paired_comparison(sa, sb)
            per_seed[s] = {
                k: pc[k]
                for k in (
                    "n_pairs",
                    "success_a",
                    "success_b",
                    "rate_a",
                    "rate_b",
                    "diff",
                    "diff_ci",
                    "diff_ci_method",
                    "b_only",
                    "a_only",
                    "error_pairs",
                    "p",
                )
            }
            per_seed[s]["test"] = f"{pc['test']} (per seed)"
    diffs = [v["diff"] for v in per_seed.values()]
    return {
        "a": pair[0],
        "b": pair[1],
        **clustered_paired_comparison(a, b, cluster_of),
        "per_seed": per_seed,
        "seed_diff_mean": float(np.mean(diffs)),
        "seed_diff_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None,
        "unpaired_seeds": {
            "a": sorted({k[0] for k in a} - set(per_seed), key=seed_key),
            "b": sorted({k[0] for k in b} - set(per_seed), key=seed_key),
        },
        "extra_eval_seeds": {"a": extra[0], "b": extra[1]},
    }
