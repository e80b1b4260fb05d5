"""Multi-seed sweeps in the report: per-seed and pooled closed-loop success, and the paired comparison pooled over
training seeds. A run's experiment is its config "preset"; its training seed is config train.seed (else "seed<N>"
in the folder name, else the folder name). Runs that share a preset are seeds of one experiment.

A pair is two episodes of one start run under one protocol (protocol.py): pairs whose step limit or evaluation
seed differ are refused and listed apart. Every seed is evaluated on the same (suite, task, initial state)
episodes, so pooled pairs are clustered by those:
the pooled p-value is a cluster sign-flip permutation test and the pooled interval a cluster bootstrap
(stats.clustered_paired_comparison); the exact McNemar test is kept per seed, where pairs are one per cluster.
Pure statistics over loaded runs: no plotting, no model code (the report's sections and tables show the results)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from ..evaluate.episodes import outcome
from .protocol import protocol_of, split_by_protocol
from .stats import clustered_paired_comparison, paired_comparison, usable_pairs, wilson_interval


def _seed_order(e: dict) -> tuple:
    seed = e.get("seed")
    return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed))


def seed_key(seed) -> tuple:
    """Sort key of a training seed: numbers in order, then names."""
    return _seed_order({"seed": seed})


def chosen_records(episodes: list[dict], errors: list[dict] = ()) -> tuple[dict, int]:
    """(suite, task_id, init_index) -> (the record a pair uses, whether it is an error): several evaluation seeds at
    one initial state keep the lowest seed that finished; an initial state that only ended in errors keeps its
    error (so the pair is left out and counted as such). Also the count of extra finished records set aside."""
    out, extra = {}, 0
    for e in sorted(episodes, key=_seed_order):
        key = (e["suite"], e["task_id"], e["init_index"])
        if key in out:
            extra += 1
            continue
        out[key] = (e, False)
    for e in errors:
        out.setdefault((e["suite"], e["task_id"], e["init_index"]), (e, True))
    return out, extra


def record_protocol(e: dict, run: dict) -> dict | None:
    """An episode's protocol: its eval folder's identity (runs.load_episodes sets "_identity"), else the run's
    "protocol", else None (not recorded)."""
    return protocol_of(e.get("_identity")) or run.get("protocol") or None


def side(runs: list[dict], seeded: bool) -> tuple[dict, dict, int, list[str]]:
    """One arm's pairs: key -> outcome, key -> protocol, the extra evaluation seeds set aside, and the runs with an
    episode whose protocol is not recorded. Keys are (suite, task_id, init_index), led by the training seed when
    seeded."""
    vals, prots, extra, missing = {}, {}, 0, []
    for r in runs:
        recs, x = chosen_records(r["head"], r.get("head_errors", []))
        prefix = (r["train_seed"],) if seeded else ()
        for k, (e, err) in recs.items():
            vals[(*prefix, *k)] = None if err else outcome(e) == "success"
            prots[(*prefix, *k)] = record_protocol(e, r)
            if prots[(*prefix, *k)] is None:
                missing.append(f"{r['preset']} training seed {r['train_seed']}" if seeded else r["name"])
        extra += x
    return vals, prots, extra, list(dict.fromkeys(missing))


def acting(runs: list[dict]) -> str:
    """How an arm acts (its own settings, never part of the protocol): the replanning interval its evaluations
    recorded and the chunk length of its config."""
    replan = sorted({(e.get("_identity") or {}).get("replan_every") for r in runs for e in r["head"]} - {None})
    chunk = sorted({((r.get("config") or {}).get("policy") or {}).get("chunk_size") for r in runs} - {None})
    text = f"replans every {', '.join(map(str, replan))} frame(s)" if replan else "replanning interval not recorded"
    return text + (f" of {', '.join(map(str, chunk))}-action chunks" if chunk else "")


def match_sides(sa: tuple, sb: tuple) -> dict:
    """Two sides (side()'s tuples) matched under protocol.split_by_protocol, with the runs that recorded no protocol
    where a kept pair depends on them."""
    split = split_by_protocol(sa[0], sb[0], sa[1], sb[1])
    split["protocol_not_recorded"] = list(dict.fromkeys(sa[3] + sb[3])) if split["unknown"] else []
    split["extra"] = (sa[2], sb[2])
    return split


def pooled_sides(runs: list[dict], pair: tuple[str, str]) -> dict:
    """The pooled pairs of the two presets, keyed by (training seed, suite, task_id, init_index), after refusing
    pairs run under different protocols (match_sides)."""
    arms = [[r for r in runs if r["preset"] == p and evaluated(r)] for p in pair]
    m = match_sides(*(side(rs, True) for rs in arms))
    m["acting"] = {"a": acting(arms[0]), "b": acting(arms[1])}
    return m


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
    (suite, task_id, init_index); per training seed, paired_comparison (exact McNemar). Errors are left out, and so
    are pairs whose two episodes ran under different protocols (a run's "protocol", or its eval folders' identity):
    those are listed in "refused", grouped by their two protocols. None when no usable pair is left."""
    m = pooled_sides(runs, pair)
    a, b = m["a"], m["b"]
    if not usable_pairs(a, b):
        return None
    per_seed = {}
    for s in sorted({k[0] for k in a} & {k[0] for k in b}, key=seed_key):
        sa, sb = ({k: v for k, v in d.items() if k[0] == s} for d in (a, b))
        if usable_pairs(sa, sb):
            pc = paired_comparison(sa, sb)
            per_seed[s] = {k: pc[k] for k in _PER_SEED}
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
        "extra_eval_seeds": {"a": m["extra"][0], "b": m["extra"][1]},
        **protocol_summary(m),
    }


_PER_SEED = (
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


def protocol_summary(m: dict) -> dict:
    """The protocol part of a comparison's result: refused pairs, runs without a recorded protocol and fields only
    one side records (and the sentence saying so), the protocols the kept pairs share, and how each arm acts."""
    missing, one_sided = m["protocol_not_recorded"], m.get("one_sided", [])
    note = [f"protocol not recorded for: {', '.join(missing)}"] if missing else []
    note += [f"recorded by one side only: {', '.join(map(str, one_sided))}"] if one_sided else []
    return {
        "refused": m["refused"],
        "n_refused": m["n_refused"],
        "protocols": m["protocols"],
        "protocol_not_recorded": missing,
        "protocol_fields_one_side": one_sided,
        "protocol_note": "; ".join(note) or None,
        "acting": m.get("acting"),
    }
