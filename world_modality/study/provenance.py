"""Which code commit built each of a study's numbers: every dataset, training run and evaluation as its own record
says (records.py), and whether the table was built across commits."""

from __future__ import annotations

from .external_arms import EXTERNAL
from .records import NOT_RECORDED, commit_text


def stage_commits(generations: dict[str, dict], evals: list[dict]) -> dict:
    """{"datasets": {suite: commit}, "train": {run: commit}, "eval": {run/suite: commit}, "commits": [...]}; a
    stage whose record carries no provenance is "not recorded"."""
    datasets = {suite: commit_text(g.get("provenance")) for suite, g in generations.items() if "dataset" in g}
    train: dict[str, str] = {}
    evaluated: dict[str, str] = {}
    for r in evals:
        if "not_run" in r:
            continue
        prov = r.get("provenance") or {}
        run = f"{r['train_suite']}/{r['experiment']}/{r['seed']}"
        if r["train_suite"] != EXTERNAL:  # an external arm was trained elsewhere, by no commit of this project
            train[run] = commit_text(prov.get("train"))
        evaluated[f"{run}/{r['suite']}"] = commit_text(prov.get("eval"))
    commits = sorted(
        {c for d in (datasets, train, evaluated) for v in d.values() if v != NOT_RECORDED for c in v.split(", ")}
    )
    return {"datasets": datasets, "train": train, "eval": evaluated, "commits": commits}


def across_commits(prov: dict) -> str | None:
    """The warning line when the stages' recorded commits differ, else None."""
    commits = prov.get("commits", [])
    return f"Built across commits: {', '.join(commits)}." if len(commits) > 1 else None


def render_commits(prov: dict) -> list[str]:
    lines = [
        "",
        "## Code commits of the stages",
        "",
        "As each stage's own record names them (-dirty: the code had "
        "uncommitted changes; several commits: a later commit continued the stage).",
        "",
    ]
    commits = prov.get("commits", [])
    if not commits:
        lines.append("No stage recorded its commit (records written before provenance was kept): not recorded.")
    else:
        lines.append(across_commits(prov) or f"Every stage that recorded its commit ran at {commits[0]}.")
    lines.append("")
    by_commit: dict[str, dict[str, list[str]]] = {}
    for kind, key in (("datasets", "datasets"), ("training runs", "train"), ("evaluations", "eval")):
        for name, commit in prov.get(key, {}).items():
            by_commit.setdefault(commit, {}).setdefault(kind, []).append(name)
    for commit, kinds in by_commit.items():
        lines.append(f"- {commit}: " + "; ".join(f"{k} {', '.join(v)}" for k, v in kinds.items()))
    return lines
