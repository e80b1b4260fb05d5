"""Markdown + HTML report over training runs: curves, closed-loop success (errored episodes counted apart), the
train/evaluation overlap check, memory ablation, paired A/B test. Loads runs (runs.py), builds the sections
(sections.py, sections_detail.py, tables.py) and renders them (render.py); the statistics are stats.py's and
pooling.py's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .plots import plot_training_curves
from .pooling import assign_seeds, choose_pooled_pair, pool_runs, pooled_paired, pooled_sides
from .render import render_html, render_md
from .runs import headline_mode, load_run
from .sections import apart_warnings, overlap_blocks, overlap_warnings, success_blocks, summary_blocks
from .sections_detail import ablation_blocks, offline_vs_closed_blocks, pooled_blocks, probe_blocks, strip_blocks
from .stats import summarize_episodes
from .tables import paired_blocks, pooled_paired_blocks, step_cell


def _choose_compare(runs: list[dict], compare: tuple[str, str] | None, multi: bool) -> tuple[str, str] | None:
    """The two runs of the per-run comparison; None where compare names multi-seed presets or, by default, in a
    sweep."""
    with_eval = [r["name"] for r in runs if r["episodes"] or r["errors"]]
    if compare is not None:
        names = [r["name"] for r in runs]
        valid = list(dict.fromkeys([*names, *(r["preset"] for r in runs)]))
        for c in compare:
            if c not in valid:
                raise ValueError(f"compare names {c!r}, which is not an experiment here; expected one of {valid}.")
        return tuple(compare) if all(c in names for c in compare) else None
    if multi:  # several seeds per preset: the comparison pooled over seeds replaces the per-run one
        return None
    if "E0" in with_eval and "E2" in with_eval:
        return ("E0", "E2")
    if "E0" in with_eval and len(with_eval) >= 2:  # E0 is the baseline: any other experiment is compared against it
        return ("E0", next(n for n in with_eval if n != "E0"))
    return tuple(with_eval[:2]) if len(with_eval) >= 2 else None


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, compare: tuple[str, str] | None = None) -> dict:
    """Write report.md, report.html and their PNGs into out_dir; return the paths and headline numbers."""
    if not run_dirs:
        raise ValueError("write_report needs at least one run directory; got none.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    multi = assign_seeds(runs)  # some preset has several runs (training seeds)
    counts = Counter(r["name"] for r in runs)
    for r in runs:  # two runs of one preset (e.g. two seeds) stay apart
        if counts[r["name"]] > 1:
            r["name"] = f"{r['name']} ({r['dir'].name})"
    counts, seen = Counter(r["name"] for r in runs), Counter()
    for r in runs:  # folders of the same name under different parents
        seen[r["name"]] += 1
        r["name"] += f" #{seen[r['name']]}" if counts[r["name"]] > 1 else ""
    images: list[Path] = []
    result: dict = {
        "experiments": {},
        "paired": None,
        "duplicates": {},
        "images": images,
        "pooled": {},
        "paired_pooled": None,
        "set_apart": {r["name"]: r["set_apart"] for r in runs if r["set_apart"]},
    }
    for r in runs:
        r["mode"] = headline_mode(r)
        r["head"] = [e for e in r["episodes"] if e["memory"] == r["mode"]]
        r["head_errors"] = [e for e in r["errors"] if e["memory"] == r["mode"]]
        r["summary"] = summarize_episodes(r["head"] + r["head_errors"]) if r["head"] or r["head_errors"] else None
        result["duplicates"][r["name"]] = r["duplicates"]
        if r["summary"]:
            o = r["summary"]["overall"]
            result["experiments"][r["name"]] = {
                "memory": r["mode"],
                "n": o["n"],
                "k": o["k"],
                "rate": o["rate"],
                "ci": o["ci"],
                "errors": o["errors"],
                "checkpoint_step": step_cell(r["head"] + r["head_errors"]),
            }
    evald = [r for r in runs if r["episodes"] or r["errors"]]
    result["overlap"] = {
        r["name"]: [
            {"eval": ev["dir"].name, "overlap": ev["overlap"], "note": ev["note"], "train_overlap": ev["train_overlap"]}
            for ev in r["evals"]
        ]
        for r in evald
    }
    pair = _choose_compare(runs, compare, multi)
    result["pooled"], ppair = pool_runs(runs), choose_pooled_pair(runs, compare)
    result["paired_pooled"] = pooled_paired(runs, ppair) if ppair else None
    pooled_match = pooled_sides(runs, ppair) if ppair and result["paired_pooled"] is None else None

    blocks: list[tuple] = [
        ("h", 1, "World-modality evaluation report"),
        *overlap_warnings(evald),
        *apart_warnings(runs),
        *summary_blocks(runs, evald, pair, ppair if multi else None),
        ("h", 2, "Training curves"),
    ]
    if any(r["metrics"] for r in runs):
        images.append(plot_training_curves({r["name"]: r["metrics"] for r in runs}, out_dir / "training_curves.png"))
        blocks += [
            ("img", "training_curves.png", "Training curves: action loss, world loss, tanh(gate) per epoch"),
            ("p", "Per-epoch training-set means; they describe optimisation, not which policy is better."),
        ]
    else:
        blocks.append(("p", "No metrics.jsonl found in any run."))
    blocks += success_blocks(evald, out_dir, images)
    blocks += overlap_blocks(runs, evald)
    if multi:
        blocks += pooled_blocks(runs, result["pooled"], out_dir, images)
    blocks += ablation_blocks(runs, evald, out_dir, images)
    blocks += paired_blocks(runs, pair, result, multi)
    if multi:
        blocks += pooled_paired_blocks(ppair, result["paired_pooled"], pooled_match)
    blocks += offline_vs_closed_blocks(runs)
    blocks += probe_blocks(runs)
    blocks += strip_blocks(runs, out_dir, images)

    md, htm = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_md(blocks))
    htm.write_text(render_html(blocks, "World-modality evaluation report"))
    result.update({"report_md": md, "report_html": htm, "compare": pair, "compare_pooled": ppair})
    return result
