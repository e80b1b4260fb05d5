"""The report's sections, as blocks for render.py: the summary, closed-loop success with its figures, the
train/evaluation overlap check, the memory ablation, seeds pooled, offline metrics against closed-loop success,
the probe's R², and frame strips. Figures are drawn by plots.py; the numbers come from stats, pooling and tables."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

from ..evaluate.episodes import outcome
from .plots import frame_strip, plot_success_bars
from .pooling import evaluated, seed_key
from .runs import video_frames, video_outcome
from .stats import summarize_episodes
from .tables import ci_pct, count_cell, fmt, mean_std, pct, rate_cell

OFFLINE_CAVEAT = ("Offline loss does not rank policies: held-out action MSE did not predict closed-loop success in "
                  "the research notes, so rank experiments by the closed-loop column; the offline columns explain a "
                  "policy.")


def _mode_order(modes) -> list[str]:
    """Memory modes as columns: "none" (E0, no memory) first, then MEMORY_MODES order (predicted, present, the
    ablations), then any other."""
    from ..config import MEMORY_MODES

    order = {"none": -1, **{m: i for i, m in enumerate(MEMORY_MODES)}}
    return sorted(set(modes), key=lambda m: (order.get(m, len(MEMORY_MODES)), str(m)))


def _bar(o: dict) -> dict:
    return {"rate": o["rate"], "lo": o["ci"][0], "hi": o["ci"][1], "n": o["n"], "k": o["k"]}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def summary_blocks(runs: list[dict], evald: list[dict], pair, pooled_pair=None) -> list[tuple]:
    suites = sorted({e["suite"] for r in evald for e in r["episodes"] + r["errors"]}, key=str)
    modes = sorted({e["memory"] for r in evald for e in r["episodes"] + r["errors"]}, key=str)
    text = f"This report covers {len(runs)} training run(s) ({', '.join(r['name'] for r in runs)}). "
    if evald:
        text += (f"Closed-loop success was measured for {', '.join(r['name'] for r in evald)} on "
                 f"{sum(len(r['episodes']) for r in evald)} unique finished episodes"
                 f" (and {sum(len(r['errors']) for r in evald)} that ended in an error)"
                 f" in {', '.join(map(str, suites))} "
                 f"(memory modes: {', '.join(map(str, modes))}). ")
    else:
        text += "There are no closed-loop results; only training curves and offline metrics are shown. "
    if pair:
        text += (f"The paired A/B comparison is {pair[1]} against {pair[0]} over identical (suite, task, initial "
                 "state) episodes. ")
    if pooled_pair:
        text += (f"Runs sharing a preset are training seeds; {pooled_pair[1]} is compared with {pooled_pair[0]} "
                 "pooled over seeds, on (training seed, suite, task, initial state) pairs. ")
    text += ("Rates carry 95% Wilson intervals over finished episodes; episodes that ended in an error (an exception, "
             "not the policy's failure) are counted apart and left out of every rate and comparison. Differences carry "
             "a bootstrap interval; p-values come from episode outcomes only (no p-values from step-level losses): "
             "an exact McNemar test per run and per training seed, and, pooled over training seeds, a cluster "
             "sign-flip permutation test over (suite, task, initial state). Each table names its test and interval.")
    notes = []
    for r in runs:
        if r["files"]:
            notes.append(f"{r['name']}: {len(r['files'])} episode file(s) merged; {r['duplicates']} duplicate "
                         f"episode line(s) counted once ({r['conflicts']} with a differing outcome; the first line "
                         "kept)"
                         + (f"; {r['bad_lines']} unreadable line(s) skipped" if r["bad_lines"] else "")
                         + f"; {len(r['errors'])} episode(s) ended in an error and never finished (left out of rates)"
                         + f"; {r['retried_errors']} errored attempt(s) retried and finished"
                         + " (the finished one counts).")
        else:
            notes.append(f"{r['name']}: no closed-loop results.")
    rows = [[r["name"], r["dir"].name, len({m.get("epoch") for m in r["metrics"] if m.get("kind", "train") == "train"}),
             fmt(next((m.get("action_loss") for m in reversed(r["metrics"]) if m.get("action_loss") is not None),
                      None)),
             "yes" if r["offline"] else "no"] for r in runs]
    return [("p", text), ("h", 2, "Runs"),
            ("table", ["experiment", "run folder", "epochs logged", "final action loss", "offline eval"], rows),
            ("list", notes)]


def success_blocks(evald: list[dict], out_dir: Path, images: list[Path]) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Closed-loop success")]
    if not evald:
        return blocks + [("p", "No closed-loop results.")]
    rows = []
    for r in evald:
        o = r["summary"]["overall"]
        # Files written before outcomes were recorded hold exceptions as failures ("exception: ..."): they stay
        # failures there (they cannot be told apart from the policy's any more) and are shown as such.
        fails = Counter("old_exception" if "outcome" not in e and str(e.get("failure")).startswith("exception")
                        else e.get("failure") for e in r["head"] if outcome(e) == "failure")
        rows.append([r["name"], r["mode"], o["n"], o["k"], pct(o["rate"]), ci_pct(o["ci"]), fails["timeout"],
                     o["errors"], fails["old_exception"]])
    images.append(plot_success_bars({r["name"]: _bar(r["summary"]["overall"]) for r in evald},
                                    out_dir / "success_overall.png", "Closed-loop success per experiment"))
    per_task = [r["summary"]["per_task"] for r in evald]
    tasks = sorted({k for pt in per_task for k in pt}, key=lambda t: (str(t[0]), t[1]))
    label = {k: pt[k]["task"] for pt in per_task for k in pt}
    trows = [[s, t, label[(s, t)]] + [rate_cell(pt[(s, t)]) if (s, t) in pt else "–" for pt in per_task]
             for s, t in tasks]
    per_suite = [r["summary"]["per_suite"] for r in evald]
    for s in sorted({s for ps in per_suite for s in ps}, key=str):
        trows.append([s, "all", "(suite)"] + [rate_cell(ps[s]) if s in ps else "–" for ps in per_suite])
    return blocks + [
        ("p", "n counts finished episodes (successes and failures). Errors are episodes that ended in an exception "
              "(simulator, world encoder, memory...) rather than the policy's failure: left out of n and every rate, "
              "and retried by a rerun of the evaluation. Old-format exceptions are failures whose reason begins "
              "\"exception\" in episode files written before errors were recorded apart: they cannot be told apart "
              "from the policy's failures any more and stay counted as failures."),
        ("table", ["experiment", "memory", "n", "successes", "success", "95% Wilson", "timeouts", "errors (excluded)",
                   "old-format exceptions (counted as failures)"], rows),
        ("img", "success_overall.png", "Closed-loop success per experiment (95% Wilson intervals)"),
        ("h", 3, "Per task (k/n = rate [95% Wilson], finished episodes; errors apart)"),
        ("table", ["suite", "task", "instruction"] + [r["name"] for r in evald], trows)]


def overlap_warnings(runs: list[dict]) -> list[tuple]:
    """Loud flags: episodes evaluated on a start that overlaps the training data, and overlaps allowed by a check."""
    out = []
    for r in runs:
        flagged = [f for ev in r["evals"] for f in ev["train_overlap"]]
        if flagged:
            eps = ", ".join(f"{s} task {t} init {i} (memory {m})" for s, t, i, m in flagged)
            out.append(("warn", f"{r['name']}: {len(flagged)} episode(s) were evaluated on initial states that overlap "
                                f"its training data (train_overlap): {eps}. Their outcomes measure recall of training "
                                "starts, not generalisation; they are still counted in the rates."))
        for ev in r["evals"]:
            ov = ev["overlap"] or {}
            if ov.get("overlapping") and not ev["train_overlap"]:
                out.append(("warn", f"{r['name']} ({ev['dir'].name}): the overlap check found "
                                    f"{len(ov['overlapping'])} evaluation start(s) overlapping the training starts "
                                    f"({_starts(ov['overlapping'])}); allowed: {_yes(ov.get('allowed'))}."))
    return out


def _yes(x) -> str:
    return "–" if x is None else "yes" if x else "no"


def _starts(pairs) -> str:
    return ", ".join(f"task {p[0]} init {p[1]}" if isinstance(p, (list, tuple)) and len(p) == 2 else str(p)
                     for p in pairs) or "none"


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
                rows.append([r["name"], ev["dir"].name, f"not checked ({ev['note']})", "–", "–", "–", "–", "–",
                             len(ev["train_overlap"])])
                continue
            dist, tol, how = ov.get("min_distance"), ov.get("tolerance"), ov.get("how")
            checked = ("yes" if ov.get("checked") else "not checked") + (f" ({how})" if how else "")
            rows.append([r["name"], ev["dir"].name, checked,
                         ov.get("dataset") or "–", ov.get("training_starts", "–"),
                         f"{fmt(dist, '.4g')} (tolerance {fmt(tol, '.4g')})", _starts(ov.get("overlapping") or []),
                         _yes(ov.get("allowed")), len(ev["train_overlap"])])
    return blocks + [
        ("p", "Each evaluation compares its initial states with the training data's starts (settings.json "
              "\"overlap\"): a start within the tolerance of a training start overlaps, and is refused unless "
              "allowed, in which case its episodes are flagged train_overlap. Evaluations from before the check, or "
              "of a dataset that records no starts, say \"not checked\"."),
        ("table", ["experiment", "eval folder", "checked", "dataset", "training starts compared",
                   "min distance (tolerance)", "overlapping starts", "overlap allowed", "train_overlap episodes"],
         rows),
        *overlap_warnings(evald)]


def ablation_blocks(runs: list[dict], evald: list[dict], out_dir: Path, images: list[Path]) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Memory ablation")]
    if evald:
        cols = _mode_order(e["memory"] for r in evald for e in r["episodes"] + r["errors"])
        rows, groups = [], {}
        for r in evald:
            row = [r["name"]]
            for m in cols:
                eps = [e for e in r["episodes"] + r["errors"] if e["memory"] == m]
                o = summarize_episodes(eps)["overall"] if eps else None
                row.append(rate_cell(o) if o else "–")
                if o:
                    groups[f"{r['name']} · {m}"] = _bar(o)
            rows.append(row)
        blocks += [("p", "Closed-loop success per memory mode (k/n = rate [95% Wilson]):"),
                   ("table", ["experiment"] + cols, rows)]
        if len(groups) > len(evald):  # only worth a figure when some experiment ran more than one mode
            images.append(plot_success_bars(groups, out_dir / "success_memory.png",
                                            "Closed-loop success per memory mode"))
            blocks.append(("img", "success_memory.png", "Closed-loop success per memory mode (95% Wilson intervals)"))
    else:
        blocks.append(("p", "No closed-loop results."))
    offl = [r for r in runs if r["offline"]]
    if not offl:
        return blocks + [("p", "No offline evaluation (eval_offline_val.json) found.")]
    cols = _mode_order(m for r in offl for m in r["offline"].get("action_mse", {}))
    return blocks + [("p", "Held-out (offline) action MSE per memory mode, normalised by the action std:"),
                     ("table", ["experiment"] + cols,
                      [[r["name"]] + [fmt(r["offline"].get("action_mse", {}).get(m)) for m in cols] for r in offl])]


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
        rows.append([p, ", ".join(map(str, v["memory"])), n_seeds, *cells,
                     f"{v['k']}/{v['n']} = {pct(v['rate'])} {ci_pct(v['ci'])}", v["errors"],
                     mean_std(v["seed_mean"], v["seed_std"]) + f" ({n_seeds} seed{'s' * (n_seeds > 1)})"])
    folders = {p: ", ".join(f"{r['train_seed']}: {r['dir'].name}" for r in runs if r["preset"] == p and evaluated(r))
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


def offline_vs_closed_blocks(runs: list[dict]) -> list[tuple]:
    rows = []
    for r in runs:
        off = r["offline"] or {}
        mse = off.get("action_mse", {})
        mode = (r["mode"] if r["mode"] in mse
                else next((m for m in ("predicted", "none") if m in mse), next(iter(mse), None)))
        o = r["summary"]["overall"] if r["summary"] else None
        rows.append([r["name"], f"{fmt(mse.get(mode))} ({mode})" if mode else "–", fmt(off.get("world_mse")),
                     fmt(off.get("world_skill"), "+.3f"),
                     f"{pct(o['rate'])} {ci_pct(o['ci'])} (n={o['n']})" if o else "no closed-loop results"])
    return [("h", 2, "Offline metric vs closed-loop success"),
            ("table", ["experiment", "held-out action MSE (memory)", "world MSE", "world skill vs copy-last",
                       "closed-loop success"], rows), ("p", OFFLINE_CAVEAT)]


def probe_blocks(runs: list[dict]) -> list[tuple]:
    """R² of the ridge probes (analysis/probe.py) of each run that holds a probe.json; nothing otherwise."""
    from .probe import table_rows

    blocks: list[tuple] = []
    for r in (r for r in runs if r.get("probe")):
        try:
            header, rows = table_rows(r["probe"])
            p = r["probe"]
            note = (f"{p['features']}: ridge fit on {len(p['train_episodes'])} training episodes, R² on "
                    f"{len(p['test_episodes'])} held-out episodes (1 = exact, 0 = their mean). The future columns "
                    f"decode with the same readout; copy-last gives the positions at t as those at t+k.")
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
