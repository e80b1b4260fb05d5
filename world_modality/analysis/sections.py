"""The report's headline sections, as blocks for render.py: the summary, closed-loop success with its figures and
the train/evaluation overlap check (the rest are in sections_detail.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..evaluate.episodes import outcome
from .identity import apart_text
from .plots import plot_success_bars
from .tables import ci_pct, fmt, pct, rate_cell, step_cell


def success_bar(o: dict) -> dict:
    return {"rate": o["rate"], "lo": o["ci"][0], "hi": o["ci"][1], "n": o["n"], "k": o["k"]}


def summary_blocks(runs: list[dict], evald: list[dict], pair, pooled_pair=None) -> list[tuple]:
    suites = sorted({e["suite"] for r in evald for e in r["episodes"] + r["errors"]}, key=str)
    modes = sorted({e["memory"] for r in evald for e in r["episodes"] + r["errors"]}, key=str)
    text = f"This report covers {len(runs)} training run(s) ({', '.join(r['name'] for r in runs)}). "
    if evald:
        text += (
            f"Closed-loop success was measured for {', '.join(r['name'] for r in evald)} on "
            f"{sum(len(r['episodes']) for r in evald)} unique finished episodes"
            f" (and {sum(len(r['errors']) for r in evald)} that ended in an error)"
            f" in {', '.join(map(str, suites))} "
            f"(memory modes: {', '.join(map(str, modes))}). "
        )
    else:
        text += "There are no closed-loop results; only training curves and offline metrics are shown. "
    if pair:
        text += (
            f"The paired A/B comparison is {pair[1]} against {pair[0]} over the (suite, task, initial state) "
            "starts both ran under one protocol (step limit, evaluation seed). "
        )
    if pooled_pair:
        text += (
            f"Runs sharing a preset are training seeds; {pooled_pair[1]} is compared with {pooled_pair[0]} "
            "pooled over seeds, on (training seed, suite, task, initial state) pairs run under one protocol. "
        )
    text += (
        "Rates carry 95% Wilson intervals over finished episodes; episodes that ended in an error (an exception, "
        "not the policy's failure) are counted apart and left out of every rate and comparison. Differences carry "
        "a bootstrap interval; p-values come from episode outcomes only (no p-values from step-level losses): "
        "an exact McNemar test per run and per training seed, and, pooled over training seeds, a cluster "
        "sign-flip permutation test over (suite, task, initial state). Each table names its test and interval."
    )
    notes = []
    for r in runs:
        if r["files"]:
            notes.append(
                f"{r['name']}: {len(r['files'])} episode file(s) merged; {r['duplicates']} duplicate "
                f"episode line(s) counted once ({r['conflicts']} with a differing outcome; the first line "
                "kept)"
                + (f"; {r['bad_lines']} unreadable line(s) skipped" if r["bad_lines"] else "")
                + f"; {len(r['errors'])} episode(s) ended in an error and never finished (left out of rates)"
                + f"; {r['retried_errors']} errored attempt(s) retried and finished"
                + " (the finished one counts)."
            )
        else:
            notes.append(f"{r['name']}: no closed-loop results.")
    rows = [
        [
            r["name"],
            r["dir"].name,
            len({m.get("epoch") for m in r["metrics"] if m.get("kind", "train") == "train"}),
            fmt(next((m.get("action_loss") for m in reversed(r["metrics"]) if m.get("action_loss") is not None), None)),
            "yes" if r["offline"] else "no",
            step_cell(r["episodes"] + r["errors"]) if r["episodes"] or r["errors"] else "–",
        ]
        for r in runs
    ]
    return [
        ("p", text),
        ("h", 2, "Runs"),
        (
            "table",
            [
                "experiment",
                "run folder",
                "epochs logged",
                "final action loss",
                "offline eval",
                "evaluated checkpoint step",
            ],
            rows,
        ),
        ("list", notes),
    ]


def success_blocks(evald: list[dict], out_dir: Path, images: list[Path]) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Closed-loop success")]
    if not evald:
        return blocks + [("p", "No closed-loop results.")]
    rows = []
    for r in evald:
        o = r["summary"]["overall"]
        # Files written before outcomes were recorded hold exceptions as failures ("exception: ..."): they stay
        # failures there (they cannot be told apart from the policy's any more) and are shown as such.
        fails = Counter(
            "old_exception"
            if "outcome" not in e and str(e.get("failure")).startswith("exception")
            else e.get("failure")
            for e in r["head"]
            if outcome(e) == "failure"
        )
        rows.append(
            [
                r["name"],
                r["mode"],
                step_cell(r["head"] + r["head_errors"]),
                o["n"],
                o["k"],
                pct(o["rate"]),
                ci_pct(o["ci"]),
                fails["timeout"],
                o["errors"],
                fails["old_exception"],
            ]
        )
    images.append(
        plot_success_bars(
            {r["name"]: success_bar(r["summary"]["overall"]) for r in evald},
            out_dir / "success_overall.png",
            "Closed-loop success per experiment",
        )
    )
    per_task = [r["summary"]["per_task"] for r in evald]
    tasks = sorted({k for pt in per_task for k in pt}, key=lambda t: (str(t[0]), t[1]))
    label = {k: pt[k]["task"] for pt in per_task for k in pt}
    trows = [
        [s, t, label[(s, t)]] + [rate_cell(pt[(s, t)]) if (s, t) in pt else "–" for pt in per_task] for s, t in tasks
    ]
    per_suite = [r["summary"]["per_suite"] for r in evald]
    for s in sorted({s for ps in per_suite for s in ps}, key=str):
        trows.append([s, "all", "(suite)"] + [rate_cell(ps[s]) if s in ps else "–" for ps in per_suite])
    return blocks + [
        (
            "p",
            "n counts finished episodes (successes and failures). Errors are episodes that ended in an exception "
            "(simulator, world encoder, memory...) rather than the policy's failure: left out of n and every rate, "
            "and retried by a rerun of the evaluation. Old-format exceptions are failures whose reason begins "
            '"exception" in episode files written before errors were recorded apart: they cannot be told apart '
            "from the policy's failures any more and stay counted as failures.",
        ),
        (
            "table",
            [
                "experiment",
                "memory",
                "checkpoint step",
                "n",
                "successes",
                "success",
                "95% Wilson",
                "timeouts",
                "errors (excluded)",
                "old-format exceptions (counted as failures)",
            ],
            rows,
        ),
        ("img", "success_overall.png", "Closed-loop success per experiment (95% Wilson intervals)"),
        *apart_blocks(evald),
        ("h", 3, "Per task (k/n = rate [95% Wilson], finished episodes; errors apart)"),
        (
            "table",
            ["suite", "task", "instruction"]
            + [f"{r['name']} (step {step_cell(r['head'] + r['head_errors'])})" for r in evald],
            trows,
        ),
    ]


def overlap_warnings(runs: list[dict]) -> list[tuple]:
    """Loud flags: episodes evaluated on a start that overlaps the training data, and overlaps allowed by a check."""
    out = []
    for r in runs:
        flagged = [f for ev in r["evals"] for f in ev["train_overlap"]]
        if flagged:
            eps = ", ".join(f"{s} task {t} init {i} (memory {m})" for s, t, i, m in flagged)
            out.append(
                (
                    "warn",
                    f"{r['name']}: {len(flagged)} episode(s) were evaluated on initial states that overlap "
                    f"its training data (train_overlap): {eps}. Their outcomes measure recall of training "
                    "starts, not generalisation; they are still counted in the rates.",
                )
            )
        for ev in r["evals"]:
            ov = ev["overlap"] or {}
            if ov.get("overlapping") and not ev["train_overlap"]:
                out.append(
                    (
                        "warn",
                        f"{r['name']} ({ev['dir'].name}): the overlap check found "
                        f"{len(ov['overlapping'])} evaluation start(s) overlapping the training starts "
                        f"({_starts(ov['overlapping'])}); allowed: {_yes(ov.get('allowed'))}.",
                    )
                )
    return out


def _yes(x) -> str:
    return "–" if x is None else "yes" if x else "no"


def _starts(pairs) -> str:
    return (
        ", ".join(f"task {p[0]} init {p[1]}" if isinstance(p, (list, tuple)) and len(p) == 2 else str(p) for p in pairs)
        or "none"
    )


def overlap_blocks(runs: list[dict], evald: list[dict]) -> list[tuple]:
    """Per evaluated run and eval folder: whether the evaluation's starts were checked against the training starts."""
    blocks: list[tuple] = [("h", 2, "Train/evaluation overlap check")]
    if not evald:
        return blocks + [("p", "No closed-loop results.")]
    rows = []
    for r in evald:
        for ev in r["evals"]:
            ov = ev["overlap"]
            if ov is None:
                rows.append(
                    [
                        r["name"],
                        ev["dir"].name,
                        f"not checked ({ev['note']})",
                        "–",
                        "–",
                        "–",
                        "–",
                        "–",
                        len(ev["train_overlap"]),
                    ]
                )
                continue
            dist, tol, how = ov.get("min_distance"), ov.get("tolerance"), ov.get("how")
            checked = ("yes" if ov.get("checked") else "not checked") + (f" ({how})" if how else "")
            rows.append(
                [
                    r["name"],
                    ev["dir"].name,
                    checked,
                    ov.get("dataset") or "–",
                    ov.get("training_starts", "–"),
                    f"{fmt(dist, '.4g')} (tolerance {fmt(tol, '.4g')})",
                    _starts(ov.get("overlapping") or []),
                    _yes(ov.get("allowed")),
                    len(ev["train_overlap"]),
                ]
            )
    return blocks + [
        (
            "p",
            "Each evaluation compares its initial states with the training data's starts (settings.json "
            '"overlap"): a start within the tolerance of a training start overlaps, and is refused unless '
            "allowed, in which case its episodes are flagged train_overlap. Evaluations from before the check, or "
            'of a dataset that records no starts, say "not checked".',
        ),
        (
            "table",
            [
                "experiment",
                "eval folder",
                "checked",
                "dataset",
                "training starts compared",
                "min distance (tolerance)",
                "overlapping starts",
                "overlap allowed",
                "train_overlap episodes",
            ],
            rows,
        ),
        *overlap_warnings(evald),
    ]


def apart_warnings(runs: list[dict]) -> list[tuple]:
    """Loud flags: evaluations of another identity found beside the reported one, kept out of every rate."""
    return [("warn", f"{r['name']}: {apart_text(a)}.") for r in runs for a in r.get("set_apart", [])]


def apart_blocks(runs: list[dict]) -> list[tuple]:
    """The evaluations set apart (runs.load_episodes): each with its own counts and how it differs."""
    rows = [
        [
            r["name"],
            a["dir"].name,
            a["suite"],
            a["memory"],
            "not recorded" if a["checkpoint_step"] is None else str(a["checkpoint_step"]),
            f"{a['k']}/{a['n']}" + (f" (+{a['errors']} errors)" if a["errors"] else ""),
            "identity not recorded"
            if a["differs"] is None
            else "; ".join(f"{k}: {v[0]!r} vs {v[1]!r}" for k, v in a["differs"].items()),
            ", ".join(d.name for d in a["headline"]),
        ]
        for r in runs
        for a in r.get("set_apart", [])
    ]
    if not rows:
        return []
    return [
        ("h", 3, "Evaluations not merged"),
        (
            "p",
            "Only evaluations of one identity (checkpoint step and weights, evaluation seed, step limit, "
            "replanning interval, ...) merge into a rate. Per run, suite and memory mode the reported one is the "
            "evaluation of the newest checkpoint step, then the one with the most episodes, then the longest step "
            "limit; these others are in no rate.",
        ),
        (
            "table",
            [
                "experiment",
                "eval folder",
                "suite",
                "memory",
                "checkpoint step",
                "successes/finished",
                "differs (there vs reported)",
                "reported eval folder",
            ],
            rows,
        ),
    ]
