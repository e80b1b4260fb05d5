"""Report tables of closed-loop statistics (pure: numbers in, table blocks out; no plotting, no model code): the
number formats every table shares, and the paired-comparison table, built by one function for the per-run, the
pooled and the per-seed comparisons."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .pooling import acting, match_sides, protocol_summary, side
from .protocol import pairing_sentence, refusal_blocks
from .stats import paired_comparison, usable_pairs


def pct(x: float) -> str:
    """A rate as a percentage with one decimal; n/a for none."""
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.1f}%"


def ci_pct(ci) -> str:
    """A (low, high) rate interval in percent."""
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]%"


def mean_std(mean: float, std: float | None, unit: str = "%") -> str:
    """A mean ± sample std across seeds: a rate in percent, or a difference (unit "pp") in percentage points."""
    if unit == "pp":
        return f"{100 * mean:+.1f} pp" + (f" ± {100 * std:.1f} pp" if std is not None else "")
    return pct(mean) + (f" ± {100 * std:.1f} pp" if std is not None else "")


def count_cell(c: dict) -> str:
    """k/n = rate of a cell, with its errors apart."""
    text = f"{c['k']}/{c['n']} = {pct(c['rate'])}"
    return text + (f" (+{c['errors']} error{'s' * (c['errors'] != 1)})" if c.get("errors") else "")


def interval_pp(ci) -> str:
    """A (low, high) difference interval in percentage points; n/a when undefined."""
    lo, hi = ci
    return "n/a" if np.isnan(lo) or np.isnan(hi) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pp"


def rate_cell(c: dict) -> str:
    """k/n = rate [Wilson interval] of a cell, with its errors apart; – when nothing finished."""
    errors = f"+{c['errors']} error{'s' * (c['errors'] != 1)}" if c.get("errors") else ""
    if not c["n"]:
        return f"– ({errors})" if errors else "–"
    return f"{c['k']}/{c['n']} = {pct(c['rate'])} {ci_pct(c['ci'])}" + (f" ({errors})" if errors else "")


def fmt(x, spec=".4f") -> str:
    """A number in `spec`; – for none."""
    return "–" if x is None else format(x, spec)


def paired_table(a: str, b: str, comparisons: Sequence[dict], first: tuple[str, Sequence] | None = None) -> tuple:
    """The table block of paired comparisons of b against a, one row per comparison (stats.paired_comparison's or
    clustered_paired_comparison's dict). A "clusters" column follows "pairs" when every comparison is clustered;
    first = (header, values) puts a leading column before them (e.g. the training seed of each row)."""
    clustered = bool(comparisons) and all("n_clusters" in pc for pc in comparisons)
    header = [
        *([first[0]] if first else []),
        "pairs",
        *(["clusters"] if clustered else []),
        f"{a} success",
        f"{b} success",
        "difference",
        "95% interval",
        "interval method",
        f"{b} only",
        f"{a} only",
        "p",
        "test",
    ]
    rows = []
    for i, pc in enumerate(comparisons):
        rows.append(
            [
                *([first[1][i]] if first else []),
                pc["n_pairs"],
                *([pc["n_clusters"]] if clustered else []),
                f"{pc['success_a']} ({pct(pc['rate_a'])})",
                f"{pc['success_b']} ({pct(pc['rate_b'])})",
                f"{100 * pc['diff']:+.1f} pp",
                interval_pp(pc["diff_ci"]),
                pc["diff_ci_method"],
                pc["b_only"],
                pc["a_only"],
                f"{pc['p']:.4g}",
                pc["test"],
            ]
        )
    return ("table", header, rows)


def run_paired(ra: dict, rb: dict) -> tuple[dict | None, dict]:
    """The per-run paired comparison of rb against ra on their headline episodes (None without a usable pair) and
    the protocol match behind it (pooling.match_sides)."""
    m = match_sides(side([ra], False), side([rb], False))
    m["acting"] = {"a": acting([ra]), "b": acting([rb])}
    if not usable_pairs(m["a"], m["b"]):
        return None, m
    return {**paired_comparison(m["a"], m["b"]), **protocol_summary(m)}, m


def paired_blocks(runs: list[dict], pair, result: dict, multi: bool = False) -> list[tuple]:
    """The per-run paired comparison (exact McNemar, paired bootstrap) of pair[1] against pair[0] on their headline
    episodes run under one protocol; sets result["paired"]."""
    blocks: list[tuple] = [("h", 2, "Paired comparison")]
    if not pair:
        return (
            []
            if multi
            else blocks + [("p", "No paired comparison: it needs two experiments with closed-loop results.")]
        )
    ra, rb = (next(r for r in runs if r["name"] == n) for n in pair)
    pc, m = run_paired(ra, rb)
    xa, xb = m["extra"]
    if pc is None:
        return blocks + [
            *refusal_blocks(m, pair),
            (
                "p",
                f"No paired comparison: {pair[0]} and {pair[1]} share no finished closed-loop "
                "(suite, task, initial state) episodes run under one protocol.",
            ),
        ]
    result["paired"] = {"a": pair[0], "b": pair[1], **pc}
    left = (
        f"Episodes without a partner were left out: {pc['unpaired_keys']['a']} of {pair[0]}, "
        f"{pc['unpaired_keys']['b']} of {pair[1]}; pairs left out because an episode ended in an error on either "
        f"side: {pc['error_pairs']}; pairs refused for differing protocols: {pc['n_refused']}"
        + (
            f"; extra seeds at one initial state (lowest seed kept): {xa} of {pair[0]}, {xb} of {pair[1]}."
            if xa or xb
            else "."
        )
    )
    return blocks + [
        *refusal_blocks(pc, pair),
        (
            "p",
            f"{pair[1]} (memory {rb['mode']}, {eval_steps(rb['head'])}) against {pair[0]} (memory {ra['mode']}, "
            f"{eval_steps(ra['head'])}) on {pc['n_pairs']} {pairing_sentence(pc, pair)}. "
            f"Difference = {pair[1]} − {pair[0]}.",
        ),
        paired_table(pair[0], pair[1], [pc]),
        *few_pairs_blocks(pc["n_pairs"]),
        ("p", left),
        ("p", acting_sentence(pc["acting"], pair)),
    ]


def few_pairs_blocks(n_pairs: int) -> list[tuple]:
    from .levels import FEW_FOR_BOOTSTRAP

    if n_pairs >= FEW_FOR_BOOTSTRAP:
        return []
    return [
        (
            "p",
            f"WARNING: only {n_pairs} pairs. A bootstrap interval over so few is unreliable (it can exclude 0 where "
            "the exact test does not, or have no width at all): read the exact p-value, not the interval.",
        )
    ]


def acting_sentence(act: dict, pair) -> str:
    """How each arm acts: its own settings, which may differ between the two arms of a pair."""
    return (
        f"How each arm acts (its own settings, not part of the protocol): {pair[0]} {act['a']}; {pair[1]} {act['b']}."
    )


def step_cell(records: list[dict]) -> str:
    """The checkpoint step(s) whose evaluation gave these episodes (their eval folders' identity): '40', '30, 40',
    'not recorded'."""
    steps = {(e.get("_identity") or {}).get("checkpoint_step") for e in records}
    known = sorted((s for s in steps if s is not None), key=str)
    text = ", ".join(map(str, known))
    if None in steps:
        return f"{text} and not recorded" if known else "not recorded"
    return text or "–"


def eval_steps(records: list[dict]) -> str:
    """step_cell in words: 'checkpoint step 40'."""
    return f"checkpoint step {step_cell(records)}"


def pooled_paired_blocks(pair, pc: dict | None, match: dict | None = None) -> list[tuple]:
    """The pooled paired comparison: overall row (clustered test and interval) and per-seed rows (exact McNemar);
    match: pooling.pooled_sides' result, which says why there is no comparison when pc is None."""
    blocks: list[tuple] = [("h", 2, "Paired comparison pooled over training seeds")]
    if not pair:
        return blocks + [("p", "No paired comparison: it needs two experiments with closed-loop results.")]
    if pc is None:
        return blocks + [
            *refusal_blocks(match or {}, pair),
            (
                "p",
                f"No paired comparison: {pair[0]} and {pair[1]} share no finished (training seed, "
                "suite, task, initial state) episodes run under one protocol.",
            ),
        ]
    ua, ub, xa, xb = pc["unpaired_keys"]["a"], pc["unpaired_keys"]["b"], *pc["extra_eval_seeds"].values()
    left = f"Keys that could not be paired (left out): {ua} of {pair[0]}, {ub} of {pair[1]}"
    for arm, name in (("a", pair[0]), ("b", pair[1])):
        if pc["unpaired_seeds"][arm]:
            left += f"; {name} training seed(s) without a partner: {', '.join(map(str, pc['unpaired_seeds'][arm]))}"
    left += f"; pairs left out because an episode ended in an error on either side: {pc['error_pairs']}"
    left += f"; pairs refused for differing protocols: {pc['n_refused']}"
    left += (
        f"; extra evaluation seeds at one initial state (lowest kept): {xa} of {pair[0]}, {xb} of {pair[1]}."
        if xa or xb
        else "."
    )
    return blocks + [
        *refusal_blocks(pc, pair),
        (
            "p",
            f"{pair[1]} against {pair[0]}: training seed s of {pair[1]} is paired with training seed s of {pair[0]} "
            f"on {pairing_sentence(pc, pair)}, i.e. pairs keyed by (training seed, suite, task, "
            f"initial state); {pc['n_pairs']} pairs over {len(pc['per_seed'])} seed(s) and {pc['n_clusters']} "
            f"(suite, task, initial state) clusters. Difference = {pair[1]} − {pair[0]}. The seeds share their "
            "initial states, so pairs of one cluster are not independent: the pooled p-value flips the sign of each "
            "cluster's summed difference (the seeds move together) and the pooled interval resamples whole "
            "clusters. An exact McNemar test on the pooled pairs would count each seed's repeat of an initial state "
            "as new evidence, so it is used only per seed, where each cluster holds one pair.",
        ),
        paired_table(pair[0], pair[1], [pc]),
        ("p", left),
        *([("p", acting_sentence(pc["acting"], pair))] if pc.get("acting") else []),
        ("h", 3, "Per training seed"),
        paired_table(pair[0], pair[1], list(pc["per_seed"].values()), ("training seed", list(pc["per_seed"]))),
        ("p", f"Per-seed differences: mean ± std = {mean_std(pc['seed_diff_mean'], pc['seed_diff_std'], 'pp')}."),
    ]
