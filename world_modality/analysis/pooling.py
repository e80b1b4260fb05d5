"""Multi-seed sweeps in the report: per-seed and pooled closed-loop success, and the paired comparison pooled over
training seeds. A run's experiment is its config "preset"; its training seed is config train.seed (else "seed<N>"
in the folder name, else the folder name). Runs that share a preset are seeds of one experiment."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from .plots import plot_success_bars
from .stats import paired_comparison, wilson_interval


def _pct(x: float) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]%"


def _seed_order(e: dict) -> tuple:
    seed = e.get("seed")
    return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed))


def _order(seed) -> tuple:
    return _seed_order({"seed": seed})


def _pair_keys(episodes: list[dict]) -> tuple[dict, int]:
    """(suite, task_id, init_index) -> success; several seeds at one initial state keep the lowest seed."""
    out, extra = {}, 0
    for e in sorted(episodes, key=_seed_order):
        key = (e["suite"], e["task_id"], e["init_index"])
        if key in out:
            extra += 1
            continue
        out[key] = bool(e["success"])
    return out, extra


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
    return list(dict.fromkeys(r["preset"] for r in runs if r["head"]))


def pool_runs(runs: list[dict]) -> dict:
    """{preset: {n, k, rate, ci, per_seed: {seed: {n, k, rate}}, seed_mean, seed_std, memory}} over headline episodes."""
    out = {}
    for p in _presets(runs):
        rs = sorted((r for r in runs if r["preset"] == p and r["head"]), key=lambda r: _order(r["train_seed"]))
        per_seed = {r["train_seed"]: {k: r["summary"]["overall"][k] for k in ("n", "k", "rate")} for r in rs}
        n, k = sum(c["n"] for c in per_seed.values()), sum(c["k"] for c in per_seed.values())
        rates = [c["rate"] for c in per_seed.values()]
        out[p] = {"n": n, "k": k, "rate": k / n, "ci": wilson_interval(k, n), "per_seed": per_seed,
                  "seed_mean": float(np.mean(rates)), "seed_std": float(np.std(rates, ddof=1)) if len(rates) > 1 else None,
                  "memory": sorted({r["mode"] for r in rs}, key=str)}
    return out


def choose_pooled_pair(runs: list[dict], compare: tuple[str, str] | None) -> tuple[str, str] | None:
    """The two presets to compare: compare's (a run name stands for its preset), else E0 and E2, else the first two."""
    presets = _presets(runs)
    if compare is not None:
        by_name = {r["name"]: r["preset"] for r in runs}
        a, b = (c if c in presets else by_name.get(c) for c in compare)
        return (a, b) if a in presets and b in presets and a != b else None
    if "E0" in presets and "E2" in presets:
        return ("E0", "E2")
    return tuple(presets[:2]) if len(presets) >= 2 else None


def pooled_paired(runs: list[dict], pair: tuple[str, str]) -> dict | None:
    """paired_comparison over (training seed, suite, task_id, init_index) keys, plus the same per training seed."""
    sides, extra = [{}, {}], [0, 0]
    for i, p in enumerate(pair):
        for r in runs:
            if r["preset"] == p and r["head"]:
                keys, x = _pair_keys(r["head"])
                sides[i].update({(r["train_seed"], *k): v for k, v in keys.items()})
                extra[i] += x
    a, b = sides
    if not set(a) & set(b):
        return None
    per_seed = {}
    for s in sorted({k[0] for k in a} & {k[0] for k in b}, key=_order):
        sa, sb = ({k: v for k, v in d.items() if k[0] == s} for d in (a, b))
        if set(sa) & set(sb):
            pc = paired_comparison(sa, sb)
            per_seed[s] = {k: pc[k] for k in ("n_pairs", "success_a", "success_b", "rate_a", "rate_b", "diff", "diff_ci",
                                              "b_only", "a_only")}
    diffs = [v["diff"] for v in per_seed.values()]
    return {"a": pair[0], "b": pair[1], **paired_comparison(a, b), "per_seed": per_seed,
            "seed_diff_mean": float(np.mean(diffs)), "seed_diff_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None,
            "unpaired_seeds": {"a": sorted({k[0] for k in a} - set(per_seed), key=_order),
                               "b": sorted({k[0] for k in b} - set(per_seed), key=_order)},
            "extra_eval_seeds": {"a": extra[0], "b": extra[1]}}


def _mean_std(mean: float, std: float | None, unit: str = "%") -> str:
    if unit == "pp":
        return f"{100 * mean:+.1f} pp" + (f" ± {100 * std:.1f} pp" if std is not None else "")
    return _pct(mean) + (f" ± {100 * std:.1f} pp" if std is not None else "")


def pooled_blocks(runs: list[dict], pooled: dict, out_dir: Path, images: list[Path]) -> list[tuple]:
    """The "Per-seed and pooled results" section: a table and a bar plot with per-seed dots."""
    blocks: list[tuple] = [("h", 2, "Per-seed and pooled results")]
    if not pooled:
        return blocks + [("p", "No closed-loop results.")]
    seeds = sorted({s for v in pooled.values() for s in v["per_seed"]}, key=_order)
    rows = []
    for p, v in pooled.items():
        cells = [f"{c['k']}/{c['n']} = {_pct(c['rate'])}" if (c := v["per_seed"].get(s)) else "–" for s in seeds]
        rows.append([p, ", ".join(map(str, v["memory"])), len(v["per_seed"]), *cells,
                     f"{v['k']}/{v['n']} = {_pct(v['rate'])} {_ci(v['ci'])}",
                     _mean_std(v["seed_mean"], v["seed_std"]) + f" ({len(v['per_seed'])} seed{'s' * (len(v['per_seed']) > 1)})"])
    folders = {p: ", ".join(f"{r['train_seed']}: {r['dir'].name}" for r in runs if r["preset"] == p and r["head"]) for p in pooled}
    images.append(plot_success_bars(
        {p: {"rate": v["rate"], "lo": v["ci"][0], "hi": v["ci"][1], "n": v["n"], "k": v["k"],
             "points": {f"seed {s}": c["rate"] for s, c in v["per_seed"].items()}} for p, v in pooled.items()},
        out_dir / "success_pooled.png", "Closed-loop success pooled over training seeds"))
    return blocks + [
        ("p", "Runs that share a preset are training seeds of one experiment, evaluated on the same (suite, task, "
              "initial state) episodes in the memory mode each is deployed with. Pooled = all seeds' episodes together, "
              "with a 95% Wilson interval; that interval treats episodes as independent and leaves out seed-to-seed "
              "variation, which the across-seed mean ± sample std (ddof=1) of the per-seed rates shows."),
        ("table", ["experiment", "memory", "seeds", *[f"seed {s}" for s in seeds], "pooled (95% Wilson)",
                   "per-seed mean ± std"], rows),
        ("img", "success_pooled.png", "Pooled closed-loop success (95% Wilson intervals); dots: per-seed rates"),
        ("list", [f"{p} runs (seed: folder): {f}" for p, f in folders.items()])]


def pooled_paired_blocks(pair, pc: dict | None) -> list[tuple]:
    """The pooled paired comparison: overall row and per-seed diffs."""
    blocks: list[tuple] = [("h", 2, "Paired comparison pooled over training seeds")]
    if not pair:
        return blocks + [("p", "No paired comparison: it needs two experiments with closed-loop results.")]
    if pc is None:
        return blocks + [("p", f"No paired comparison: {pair[0]} and {pair[1]} share no (training seed, suite, task, "
                               "initial state) episodes.")]
    lo, hi = pc["diff_ci"]
    row = [pc["n_pairs"], f"{pc['success_a']} ({_pct(pc['rate_a'])})", f"{pc['success_b']} ({_pct(pc['rate_b'])})",
           f"{100 * pc['diff']:+.1f} pp", f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pp", pc["b_only"], pc["a_only"], f"{pc['mcnemar_p']:.4g}"]
    seed_rows = [[s, v["n_pairs"], f"{v['success_a']} ({_pct(v['rate_a'])})", f"{v['success_b']} ({_pct(v['rate_b'])})",
                  f"{100 * v['diff']:+.1f} pp", f"[{100 * v['diff_ci'][0]:+.1f}, {100 * v['diff_ci'][1]:+.1f}] pp",
                  v["b_only"], v["a_only"]] for s, v in pc["per_seed"].items()]
    ua, ub, xa, xb = pc["unpaired_keys"]["a"], pc["unpaired_keys"]["b"], *pc["extra_eval_seeds"].values()
    left = f"Keys that could not be paired (left out): {ua} of {pair[0]}, {ub} of {pair[1]}"
    for side, name in (("a", pair[0]), ("b", pair[1])):
        if pc["unpaired_seeds"][side]:
            left += f"; {name} training seed(s) without a partner: {', '.join(map(str, pc['unpaired_seeds'][side]))}"
    left += (f"; extra evaluation seeds at one initial state (lowest kept): {xa} of {pair[0]}, {xb} of {pair[1]}."
             if xa or xb else ".")
    return blocks + [
        ("p", f"{pair[1]} against {pair[0]}: training seed s of {pair[1]} is paired with training seed s of {pair[0]} on "
              f"identical (suite, task, initial state) episodes, i.e. pairs keyed by (training seed, suite, task, initial "
              f"state); {pc['n_pairs']} pairs over {len(pc['per_seed'])} seed(s). Difference = {pair[1]} − {pair[0]}; the "
              "bootstrap resamples pairs, so it does not include seed-to-seed variation."),
        ("table", ["pairs", f"{pair[0]} success", f"{pair[1]} success", "difference", "95% paired bootstrap",
                   f"{pair[1]} only", f"{pair[0]} only", "exact McNemar p"], [row]),
        ("p", left),
        ("h", 3, "Per training seed"),
        ("table", ["training seed", "pairs", f"{pair[0]} success", f"{pair[1]} success", "difference",
                   "95% paired bootstrap", f"{pair[1]} only", f"{pair[0]} only"], seed_rows),
        ("p", f"Per-seed differences: mean ± std = {_mean_std(pc['seed_diff_mean'], pc['seed_diff_std'], 'pp')}.")]
