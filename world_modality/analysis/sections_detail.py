"""The report's sections past the headline, as blocks for render.py: the memory ablation, seeds pooled, offline
metrics against closed-loop success, the probe's R², and frame strips."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .plots import frame_strip, plot_success_bars
from .pooling import evaluated, seed_key
from .runs import video_frames, video_outcome
from .sections import success_bar
from .stats import summarize_episodes
from .tables import ci_pct, count_cell, fmt, mean_std, pct, rate_cell, step_cell

NO_EVAL = "no closed-loop results"
OFFLINE_CAVEAT = (
    "Offline loss does not rank policies: held-out action MSE did not predict closed-loop success in "
    "the research notes, so rank experiments by the closed-loop column; the offline columns explain a "
    "policy."
)


def _mode_order(modes) -> list[str]:
    """Memory modes as columns: "none" (E0, no memory) first, then MEMORY_MODES order (predicted, present, the
    ablations), then any other."""
    from ..config import MEMORY_MODES

    order = {"none": -1, **{m: i for i, m in enumerate(MEMORY_MODES)}}
    return sorted(set(modes), key=lambda m: (order.get(m, len(MEMORY_MODES)), str(m)))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def ablation_blocks(runs: list[dict], evald: list[dict], out_dir: Path, images: list[Path]) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Memory ablation")]
    if evald:
        cols = _mode_order(e["memory"] for r in evald for e in r["episodes"] + r["errors"])
        rows, groups = [], {}
        for r in evald:
            row = [r["name"], step_cell(r["episodes"] + r["errors"])]
            for m in cols:
                eps = [e for e in r["episodes"] + r["errors"] if e["memory"] == m]
                o = summarize_episodes(eps)["overall"] if eps else None
                row.append(rate_cell(o) if o else "–")
                if o:
                    groups[f"{r['name']} · {m}"] = success_bar(o)
            rows.append(row)
        blocks += [
            ("p", "Closed-loop success per memory mode (k/n = rate [95% Wilson]):"),
            ("table", ["experiment", "checkpoint step"] + cols, rows),
        ]
        if len(groups) > len(evald):  # only worth a figure when some experiment ran more than one mode
            images.append(
                plot_success_bars(groups, out_dir / "success_memory.png", "Closed-loop success per memory mode")
            )
            blocks.append(("img", "success_memory.png", "Closed-loop success per memory mode (95% Wilson intervals)"))
    else:
        blocks.append(("p", "No closed-loop results."))
    offl = [r for r in runs if r["offline"]]
    if not offl:
        return blocks + [("p", "No offline evaluation (eval_offline_val.json) found.")]
    cols = _mode_order(m for r in offl for m in r["offline"].get("action_mse", {}))
    return blocks + [
        ("p", "Held-out (offline) action MSE per memory mode, normalised by the action std:"),
        (
            "table",
            ["experiment"] + cols,
            [[r["name"]] + [fmt(r["offline"].get("action_mse", {}).get(m)) for m in cols] for r in offl],
        ),
    ]


def pooled_blocks(runs: list[dict], pooled: dict, out_dir: Path, images: list[Path]) -> list[tuple]:
    """The "Per-seed and pooled results" section: a table and a bar plot with per-seed dots."""
    blocks: list[tuple] = [("h", 2, "Per-seed and pooled results")]
    if not pooled:
        return blocks + [("p", "No closed-loop results.")]
    seeds = sorted({s for v in pooled.values() for s in v["per_seed"]}, key=seed_key)
    rows = []
    for p, v in pooled.items():
        cells = [count_cell(c) if (c := v["per_seed"].get(s)) else "–" for s in seeds]
        n_seeds = len(v["per_seed"])
        rows.append(
            [
                p,
                ", ".join(map(str, v["memory"])),
                n_seeds,
                *cells,
                f"{v['k']}/{v['n']} = {pct(v['rate'])} {ci_pct(v['ci'])}",
                v["errors"],
                mean_std(v["seed_mean"], v["seed_std"]) + f" ({n_seeds} seed{'s' * (n_seeds > 1)})",
                step_cell([e for r in runs if r["preset"] == p for e in r["head"] + r.get("head_errors", [])]),
            ]
        )
    folders = {
        p: ", ".join(f"{r['train_seed']}: {r['dir'].name}" for r in runs if r["preset"] == p and evaluated(r))
        for p in pooled
    }
    images.append(
        plot_success_bars(
            {
                p: {
                    "rate": v["rate"],
                    "lo": v["ci"][0],
                    "hi": v["ci"][1],
                    "n": v["n"],
                    "k": v["k"],
                    "points": {f"seed {s}": c["rate"] for s, c in v["per_seed"].items()},
                }
                for p, v in pooled.items()
            },
            out_dir / "success_pooled.png",
            "Closed-loop success pooled over training seeds",
        )
    )
    return blocks + [
        (
            "p",
            "Runs that share a preset are training seeds of one experiment, evaluated on the same (suite, task, "
            "initial state) episodes in the memory mode each is deployed with. Pooled = all seeds' finished "
            "episodes together, with a 95% Wilson interval; that interval treats episodes as independent and leaves "
            "out seed-to-seed variation, which the across-seed mean ± sample std (ddof=1) of the per-seed rates "
            "shows. Errored episodes (exceptions, not the policy's failures) are counted apart and left out of "
            "every rate.",
        ),
        (
            "table",
            [
                "experiment",
                "memory",
                "seeds",
                *[f"seed {s}" for s in seeds],
                "pooled (95% Wilson)",
                "errors (excluded)",
                "per-seed mean ± std",
                "checkpoint step",
            ],
            rows,
        ),
        ("img", "success_pooled.png", "Pooled closed-loop success (95% Wilson intervals); dots: per-seed rates"),
        ("list", [f"{p} runs (seed: folder): {f}" for p, f in folders.items()]),
    ]


def offline_vs_closed_blocks(runs: list[dict]) -> list[tuple]:
    rows = []
    for r in runs:
        off = r["offline"] or {}
        mse = off.get("action_mse", {})
        mode = (
            r["mode"]
            if r["mode"] in mse
            else next((m for m in ("predicted", "none") if m in mse), next(iter(mse), None))
        )
        o = r["summary"]["overall"] if r["summary"] else None
        step = step_cell(r["head"] + r["head_errors"]) if o else None
        rows.append(
            [
                r["name"],
                f"{fmt(mse.get(mode))} ({mode})" if mode else "–",
                fmt(off.get("world_mse")),
                fmt(off.get("world_skill"), "+.3f"),
                f"{pct(o['rate'])} {ci_pct(o['ci'])} (n={o['n']}, checkpoint step {step})" if o else NO_EVAL,
            ]
        )
    return [
        ("h", 2, "Offline metric vs closed-loop success"),
        (
            "table",
            [
                "experiment",
                "held-out action MSE (memory)",
                "world MSE",
                "world skill vs copy-last",
                "closed-loop success",
            ],
            rows,
        ),
        ("p", OFFLINE_CAVEAT),
    ]


def probe_blocks(runs: list[dict]) -> list[tuple]:
    """R² of the ridge probes (analysis/probe.py) of each run that holds a probe.json; nothing otherwise."""
    from .probe import table_rows

    blocks: list[tuple] = []
    for r in (r for r in runs if r.get("probe")):
        try:
            header, rows = table_rows(r["probe"])
            p = r["probe"]
            note = (
                f"{p['features']}: ridge fit on {len(p['train_episodes'])} training episodes, R² on "
                f"{len(p['test_episodes'])} held-out episodes (1 = exact, 0 = their mean). The future columns "
                f"decode with the same readout; copy-last gives the positions at t as those at t+k."
            )
        except (KeyError, TypeError, ValueError) as e:
            blocks.append(("p", f"{r['name']}: probe.json is not a probe result ({e!r})."))
            continue
        blocks += [("h", 3, r["name"]), ("p", note), ("table", header, rows)]
    return [("h", 2, "What the world latent knows (probe)"), *blocks] if blocks else []


def strip_blocks(runs: list[dict], out_dir: Path, images: list[Path]) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Frame strips")]
    for r in runs:
        picked = {}
        for v in r["videos"]:
            ok, ep = video_outcome(v, r["episodes"])
            if ok is not None and ok not in picked:
                picked[ok] = (v, ep)
        for ok in (True, False):
            if ok not in picked:
                continue
            (v, ep), what = picked[ok], "success" if ok else "failure"
            try:
                frames, labels = video_frames(v)
            except Exception as err:  # a torn or unreadable video should not sink the whole report
                blocks.append(("p", f"{r['name']}: could not read {v.name} ({type(err).__name__}: {err})."))
                continue
            desc = f" — task {ep['task_id']}, init {ep['init_index']}: {ep.get('task', '')}" if ep else ""
            name = f"strip_{_safe(r['name'])}_{what}.png"
            images.append(frame_strip(frames, out_dir / name, labels, title=f"{r['name']} first {what}{desc}"))
            blocks.append(("img", name, f"{r['name']}: first {what} ({v.name})"))
        for s in r["strips"]:
            name = f"strip_{_safe(r['name'])}_{_safe(s.parent.parent.name)}_{s.name}"
            shutil.copyfile(s, out_dir / name)
            images.append(out_dir / name)
            blocks.append(("img", name, f"{r['name']}: {s.name}"))
    return blocks if len(blocks) > 1 else blocks + [("p", "No episode videos or frame strips found.")]
