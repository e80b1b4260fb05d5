"""Multi-seed sweeps in the report: per-seed and pooled closed-loop success, and the paired comparison pooled over
training seeds. A run's experiment is its config "preset"; its training seed is config train.seed (else "seed<N>"
in the folder name, else the folder name). Runs that share a preset are seeds of one experiment.

Every seed is evaluated on the same (suite, task, initial state) episodes, so pooled pairs are clustered by those:
the pooled p-value is a cluster sign-flip permutation test and the pooled interval a cluster bootstrap
(stats.clustered_paired_comparison); the exact McNemar test is kept per seed, where pairs are one per cluster."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..evaluate.episodes import outcome
from .plots import plot_success_bars
from .stats import clustered_paired_comparison, paired_comparison, usable_pairs, wilson_interval


def _pct(x: float) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]%"


def _seed_order(e: dict) -> tuple:
    seed = e.get("seed")
    return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed))


def _order(seed) -> tuple:
    return _seed_order({"seed": seed})


def _pair_keys(episodes: list[dict], errors: list[dict] = ()) -> tuple[dict, int]:
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
    return list(dict.fromkeys(r["preset"] for r in runs if _evaluated(r)))


def _evaluated(run: dict) -> bool:
    """Whether a run has headline-mode episodes, finished or errored."""
    return bool(run["head"] or run.get("head_errors"))


def pool_runs(runs: list[dict]) -> dict:
    """{preset: {n, k, rate, ci, errors, per_seed: {seed: {n, k, rate, errors}}, seed_mean, seed_std, memory}} over
    headline episodes; errored episodes are counted in errors, never in n or a rate."""
    out = {}
    for p in _presets(runs):
        rs = sorted((r for r in runs if r["preset"] == p and _evaluated(r)), key=lambda r: _order(r["train_seed"]))
        per_seed = {r["train_seed"]: {k: r["summary"]["overall"][k] for k in ("n", "k", "rate", "errors")} for r in rs}
        n, k = sum(c["n"] for c in per_seed.values()), sum(c["k"] for c in per_seed.values())
        rates = [c["rate"] for c in per_seed.values() if c["n"]]
        out[p] = {"n": n, "k": k, "rate": k / n if n else float("nan"), "ci": wilson_interval(k, n),
                  "errors": sum(c["errors"] for c in per_seed.values()), "per_seed": per_seed,
                  "seed_mean": float(np.mean(rates)) if rates else float("nan"),
                  "seed_std": float(np.std(rates, ddof=1)) if len(rates) > 1 else None,
                  "memory": sorted({r["mode"] for r in rs}, key=str)}
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
            if r["preset"] == p and _evaluated(r):
                keys, x = _pair_keys(r["head"], r.get("head_errors", []))
                sides[i].update({(r["train_seed"], *k): v for k, v in keys.items()})
                extra[i] += x
    a, b = sides
    if not usable_pairs(a, b):
        return None
    per_seed = {}
    for s in sorted({k[0] for k in a} & {k[0] for k in b}, key=_order):
        sa, sb = ({k: v for k, v in d.items() if k[0] == s} for d in (a, b))
        if usable_pairs(sa, sb):
            pc = paired_comparison(sa, sb)
            per_seed[s] = {k: pc[k] for k in ("n_pairs", "success_a", "success_b", "rate_a", "rate_b", "diff", "diff_ci",
                                              "diff_ci_method", "b_only", "a_only", "error_pairs", "p")}
            per_seed[s]["test"] = f"{pc['test']} (per seed)"
    diffs = [v["diff"] for v in per_seed.values()]
    return {"a": pair[0], "b": pair[1], **clustered_paired_comparison(a, b, cluster_of), "per_seed": per_seed,
            "seed_diff_mean": float(np.mean(diffs)), "seed_diff_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None,
            "unpaired_seeds": {"a": sorted({k[0] for k in a} - set(per_seed), key=_order),
                               "b": sorted({k[0] for k in b} - set(per_seed), key=_order)},
            "extra_eval_seeds": {"a": extra[0], "b": extra[1]}}


def _mean_std(mean: float, std: float | None, unit: str = "%") -> str:
    if unit == "pp":
        return f"{100 * mean:+.1f} pp" + (f" ± {100 * std:.1f} pp" if std is not None else "")
    return _pct(mean) + (f" ± {100 * std:.1f} pp" if std is not None else "")


def _count(c: dict) -> str:
    text = f"{c['k']}/{c['n']} = {_pct(c['rate'])}"
    return text + (f" (+{c['errors']} error{'s' * (c['errors'] != 1)})" if c.get("errors") else "")


def _interval(ci) -> str:
    lo, hi = ci
    return "n/a" if np.isnan(lo) or np.isnan(hi) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pp"


def pooled_blocks(runs: list[dict], pooled: dict, out_dir: Path, images: list[Path]) -> list[tuple]:
    """The "Per-seed and pooled results" section: a table and a bar plot with per-seed dots."""
    blocks: list[tuple] = [("h", 2, "Per-seed and pooled results")]
    if not pooled:
        return blocks + [("p", "No closed-loop results.")]
    seeds = sorted({s for v in pooled.values() for s in v["per_seed"]}, key=_order)
    rows = []
    for p, v in pooled.items():
        cells = [_count(c) if (c := v["per_seed"].get(s)) else "–" for s in seeds]
        n_seeds = len(v["per_seed"])
        rows.append([p, ", ".join(map(str, v["memory"])), n_seeds, *cells,
                     f"{v['k']}/{v['n']} = {_pct(v['rate'])} {_ci(v['ci'])}", v["errors"],
                     _mean_std(v["seed_mean"], v["seed_std"]) + f" ({n_seeds} seed{'s' * (n_seeds > 1)})"])
    folders = {p: ", ".join(f"{r['train_seed']}: {r['dir'].name}" for r in runs if r["preset"] == p and _evaluated(r))
               for p in pooled}
    images.append(plot_success_bars(
        {p: {"rate": v["rate"], "lo": v["ci"][0], "hi": v["ci"][1], "n": v["n"], "k": v["k"],
             "points": {f"seed {s}": c["rate"] for s, c in v["per_seed"].items()}} for p, v in pooled.items()},
        out_dir / "success_pooled.png", "Closed-loop success pooled over training seeds"))
    return blocks + [
        ("p", "Runs that share a preset are training seeds of one experiment, evaluated on the same (suite, task, "
              "initial state) episodes in the memory mode each is deployed with. Pooled = all seeds' finished "
              "episodes together, with a 95% Wilson interval; that interval treats episodes as independent and leaves "
              "out seed-to-seed variation, which the across-seed mean ± sample std (ddof=1) of the per-seed rates "
              "shows. Errored episodes (exceptions, not the policy's failures) are counted apart and left out of "
              "every rate."),
        ("table", ["experiment", "memory", "seeds", *[f"seed {s}" for s in seeds], "pooled (95% Wilson)",
                   "errors (excluded)", "per-seed mean ± std"], rows),
        ("img", "success_pooled.png", "Pooled closed-loop success (95% Wilson intervals); dots: per-seed rates"),
        ("list", [f"{p} runs (seed: folder): {f}" for p, f in folders.items()])]


def pooled_paired_blocks(pair, pc: dict | None) -> list[tuple]:
    """The pooled paired comparison: overall row (clustered test and interval) and per-seed rows (exact McNemar)."""
    blocks: list[tuple] = [("h", 2, "Paired comparison pooled over training seeds")]
    if not pair:
        return blocks + [("p", "No paired comparison: it needs two experiments with closed-loop results.")]
    if pc is None:
        return blocks + [("p", f"No paired comparison: {pair[0]} and {pair[1]} share no finished (training seed, "
                               "suite, task, initial state) episodes.")]
    row = [pc["n_pairs"], pc["n_clusters"], f"{pc['success_a']} ({_pct(pc['rate_a'])})",
           f"{pc['success_b']} ({_pct(pc['rate_b'])})", f"{100 * pc['diff']:+.1f} pp", _interval(pc["diff_ci"]),
           pc["diff_ci_method"], pc["b_only"], pc["a_only"], f"{pc['p']:.4g}", pc["test"]]
    seed_rows = [[s, v["n_pairs"], f"{v['success_a']} ({_pct(v['rate_a'])})", f"{v['success_b']} ({_pct(v['rate_b'])})",
                  f"{100 * v['diff']:+.1f} pp", _interval(v["diff_ci"]), v["diff_ci_method"], v["b_only"], v["a_only"],
                  f"{v['p']:.4g}", v["test"]] for s, v in pc["per_seed"].items()]
    ua, ub, xa, xb = pc["unpaired_keys"]["a"], pc["unpaired_keys"]["b"], *pc["extra_eval_seeds"].values()
    left = f"Keys that could not be paired (left out): {ua} of {pair[0]}, {ub} of {pair[1]}"
    for side, name in (("a", pair[0]), ("b", pair[1])):
        if pc["unpaired_seeds"][side]:
            left += f"; {name} training seed(s) without a partner: {', '.join(map(str, pc['unpaired_seeds'][side]))}"
    left += f"; pairs left out because an episode ended in an error on either side: {pc['error_pairs']}"
    left += (f"; extra evaluation seeds at one initial state (lowest kept): {xa} of {pair[0]}, {xb} of {pair[1]}."
             if xa or xb else ".")
    return blocks + [
        ("p", f"{pair[1]} against {pair[0]}: training seed s of {pair[1]} is paired with training seed s of {pair[0]} on "
              f"identical (suite, task, initial state) episodes, i.e. pairs keyed by (training seed, suite, task, initial "
              f"state); {pc['n_pairs']} pairs over {len(pc['per_seed'])} seed(s) and {pc['n_clusters']} (suite, task, "
              f"initial state) clusters. Difference = {pair[1]} − {pair[0]}. The seeds share their initial states, so "
              "pairs of one cluster are not independent: the pooled p-value flips the sign of each cluster's summed "
              "difference (the seeds move together) and the pooled interval resamples whole clusters. An exact McNemar "
              "test on the pooled pairs would count each seed's repeat of an initial state as new evidence, so it is "
              "used only per seed, where each cluster holds one pair."),
        ("table", ["pairs", "clusters", f"{pair[0]} success", f"{pair[1]} success", "difference", "95% interval",
                   "interval method", f"{pair[1]} only", f"{pair[0]} only", "p", "test"], [row]),
        ("p", left),
        ("h", 3, "Per training seed"),
        ("table", ["training seed", "pairs", f"{pair[0]} success", f"{pair[1]} success", "difference", "95% interval",
                   "interval method", f"{pair[1]} only", f"{pair[0]} only", "p", "test"], seed_rows),
        ("p", f"Per-seed differences: mean ± std = {_mean_std(pc['seed_diff_mean'], pc['seed_diff_std'], 'pp')}.")]
