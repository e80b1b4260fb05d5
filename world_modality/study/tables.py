"""The study's report: the published layout (a row per experiment; Spatial, Object, Goal, Long, Average; k/n with a
95% Wilson interval, seeds pooled), the paired row per suite (clustered over suite, task and initial state), and
the LIBERO-PRO table. Statistics come from analysis/ (stats, pooling); nothing is recomputed here."""

from __future__ import annotations

import json
from pathlib import Path

from .settings import SUITE_COLUMNS, StudySettings, invocations


def _cell(episodes: list[dict], errors: int) -> dict:
    from ..analysis.stats import wilson_interval

    n = len(episodes)
    k = sum(1 for e in episodes if e.get("success"))
    return {
        "k": k,
        "n": n,
        "rate": k / n if n else None,
        "ci": list(wilson_interval(k, n)) if n else None,
        "errors": errors,
    }


def _select(evals: list[dict], experiment: str, suites: set[str]) -> tuple[list[dict], list[dict], list[str]]:
    rows = [r for r in evals if r["experiment"] == experiment and r["suite"] in suites]
    episodes = [e for r in rows for e in r.get("episodes", [])]
    errors = [e for r in rows for e in r.get("errors", [])]
    return episodes, errors, [r["not_run"] for r in rows if "not_run" in r]


def _suite_cell(evals: list[dict], experiment: str, target: str, generation: dict) -> dict:
    """One experiment on one evaluated suite, seeds pooled; without any episode, why it was not run."""
    eps, errs, why = _select(evals, experiment, {target})
    if eps or errs:
        return _cell(eps, len(errs))
    why = why or ([generation["not_run"]] if "not_run" in generation else [])
    return {"not_run": why[0] if why else "not run"}


def _paired(evals: list[dict], pair: tuple[str, str], suites: set[str]) -> dict | None:
    from ..analysis.pooling import pooled_paired

    runs = [
        {
            "preset": r["experiment"],
            "train_seed": r["seed"],
            "head": r.get("episodes", []),
            "head_errors": r.get("errors", []),
        }
        for r in evals
        if r["experiment"] in pair and r["suite"] in suites and "not_run" not in r
    ]
    p = pooled_paired(runs, pair) if runs else None
    if not p:
        return None
    return {
        "n_pairs": p["n_pairs"],
        "diff": p["diff"],
        "diff_ci": list(p["diff_ci"]),
        "p": p["p"],
        "test": p["test"],
        "n_clusters": p["n_clusters"],
    }


def results(s: StudySettings, run: dict) -> dict:
    """Every table's numbers, JSON-ready; a suite with no finished run carries its reason."""
    evals, suites = run["evals"], run["suites"]
    standard: dict[str, dict] = {}
    for e in s.experiments:
        row = {}
        for suite in SUITE_COLUMNS:
            if suite not in s.suites:
                continue
            row[suite] = _suite_cell(evals, e, suite, suites.get(suite, {}))
        eps, errs, _ = _select(evals, e, set(s.suites))
        row["average"] = _cell(eps, len(errs))
        standard[e] = row
    paired = {}
    if len(s.experiments) >= 2:
        pair = (s.experiments[0], s.experiments[1])
        paired = {
            "a": pair[0],
            "b": pair[1],
            "per_suite": {suite: _paired(evals, pair, {suite}) for suite in s.suites},
            "average": _paired(evals, pair, set(s.suites)),
        }
    pro = {}
    for p in s.pro:
        for e in s.experiments:
            cells = {}
            for suite in s.suites:
                cells[suite] = _suite_cell(evals, e, f"{suite}_{p}", suites.get(suite, {}))
            pro[f"{p}/{e}"] = cells
    suites = {suite: g for suite, g in suites.items() if suite in s.suites}  # not the --joint dataset
    zero = {suite: sorted(int(t) for t, n in g.get("demos", {}).items() if n == 0) for suite, g in suites.items()}
    errors = sum(len(r.get("errors", [])) for r in evals)
    return {
        "standard": standard,
        "paired": paired,
        "pro": pro,
        "demonstrations": {suite: g.get("demos", {}) for suite, g in suites.items()},
        "tasks_without_demonstrations": {k: v for k, v in zero.items() if v},
        "errors": errors,
        "failed": run["failed"],
    }


def _fmt(c: dict) -> str:
    if "not_run" in c:
        return "not run" if c["not_run"] == "not run" else f"not run ({c['not_run']})"
    if not c["n"]:
        return f"0/0 ({c['errors']} errors)"
    lo, hi = c["ci"]
    text = f"{c['k']}/{c['n']} = {100 * c['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text + (f" ({c['errors']} errors)" if c["errors"] else "")


def _fmt_pair(p: dict | None) -> str:
    if not p:
        return "no pairs"
    lo, hi = p["diff_ci"]
    return f"{100 * p['diff']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}], p = {p['p']:.3g} ({p['n_pairs']} pairs)"


def _provenance(runs: list[dict], seconds: dict[str, float]) -> list[str]:
    """How the study was run (each invocation's time, commit and command) and every stage's wall time."""
    lines = ["", "## How it was run", ""]
    lines += [f"- {r['utc']}, commit {r['commit']}: `{r['command']}`" for r in runs] or ["- not recorded"]
    kinds: dict[str, float] = {}
    for name, sec in seconds.items():
        kind = name.split("/")[0]
        kinds[kind] = kinds.get(kind, 0.0) + sec
    lines += [
        "",
        "## Stage wall times",
        "",
        "Summed over every invocation. "
        + ", ".join(f"{k}: {v / 60:.1f} min" for k, v in kinds.items())
        + f"; all stages: {sum(seconds.values()) / 60:.1f} min.",
        "",
        "| Stage | Seconds |",
        "|---|---|",
    ]
    return lines + [f"| {name} | {sec:.0f} |" for name, sec in seconds.items()]


def render(s: StudySettings, res: dict, runs: list[dict] = (), seconds: dict[str, float] | None = None) -> str:
    cols = list(SUITE_COLUMNS)
    head = "| Experiment | " + " | ".join(SUITE_COLUMNS[c] for c in cols) + " | Average |"
    sep = "|---" * (len(cols) + 2) + "|"
    lines = [
        "# Study: closed-loop success in LIBERO",
        "",
        f"Seeds {', '.join(map(str, s.seeds))} pooled (n sums over seeds); cells: successes/episodes = rate "
        "[95% Wilson interval]. Average: all episodes of the suites run. Errored episodes are counted apart.",
        "",
        head,
        sep,
    ]
    for e, row in res["standard"].items():
        cells = [_fmt(row[c]) if c in row else "not run" for c in cols]
        lines.append(f"| {e} | " + " | ".join(cells) + f" | {_fmt(row['average'])} |")
    p = res["paired"]
    if p:
        cells = [_fmt_pair(p["per_suite"].get(c)) if c in p["per_suite"] else "not run" for c in cols]
        lines.append(f"| {p['b']} − {p['a']} (paired) | " + " | ".join(cells) + f" | {_fmt_pair(p['average'])} |")
        lines += [
            "",
            "Paired rows: difference in points over identical (suite, task, initial state) starts, seeds "
            "pooled; 95% cluster-bootstrap interval and cluster sign-flip p (cluster = suite, task, initial "
            "state; analysis/pooling.py).",
        ]
    if res["pro"]:
        lines += [
            "",
            "## LIBERO-PRO",
            "",
            "| Perturbation / experiment | " + " | ".join(SUITE_COLUMNS[c] for c in s.suites) + " |",
            "|---" * (len(s.suites) + 1) + "|",
        ]
        for name, cells in res["pro"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(cells[c]) for c in s.suites) + " |")
    lines += ["", "## Demonstrations", ""]
    for suite, demos in res["demonstrations"].items():
        lines.append(f"- {suite}: " + (", ".join(f"task {t}: {n}" for t, n in demos.items()) or "none"))
    for suite, tasks in res["tasks_without_demonstrations"].items():
        lines.append(
            f"- {suite}: no demonstration for tasks {', '.join(map(str, tasks))} (the scripted expert "
            "failed every attempt)"
        )
    if res["failed"]:
        lines += ["", "## Stages that failed", ""] + [f"- {f}" for f in res["failed"]]
    lines += _provenance(list(runs), seconds or {})
    return "\n".join(lines) + "\n"


def write_report(s: StudySettings, run: dict) -> dict:
    res = results(s, run)
    out = Path(s.out)
    runs = invocations(out)
    (out / "report.md").write_text(render(s, res, runs, run["times"]))
    study = {"settings": s.identity(), "results": res, "seconds": run["times"], "invocations": runs}
    (out / "study.json").write_text(json.dumps(study, indent=2, default=str) + "\n")
    return res
