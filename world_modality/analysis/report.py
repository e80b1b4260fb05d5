"""Markdown + HTML report over training runs: curves, closed-loop success (errored episodes counted apart), the
train/evaluation overlap check, memory ablation, paired A/B test."""

from __future__ import annotations

import html
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluate.episodes import episode_key, is_error, outcome, resolve
from ..jsonl import read_jsonl
from .plots import frame_strip, plot_success_bars, plot_training_curves
from .pooling import (_ci, _interval, _pair_keys, _pct, assign_seeds, choose_pooled_pair, pool_runs, pooled_blocks,
                      pooled_paired, pooled_paired_blocks)
from .stats import paired_comparison, summarize_episodes, usable_pairs

OFFLINE_CAVEAT = ("Offline loss does not rank policies: held-out action MSE did not predict closed-loop success in the "
                  "research notes, so rank experiments by the closed-loop column; the offline columns explain a policy.")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); expected one JSON object.") from e


def load_episodes(run_dir: Path) -> dict:
    """All closed-loop episodes of a run (shards merged), each (suite, task_id, init_index, memory, seed) once.

    "episodes": the finished ones (success or failure), the first line written per key; "errors": the keys that
    only ever ended in an error (an exception, not the policy's), their last error each; "retried_errors": error
    lines whose key a rerun then finished (not counted anywhere else); "duplicates"/"conflicts": extra finished
    lines of a key, and those with another outcome; "evals": each eval folder's overlap check (its settings.json).
    """
    recs: list[dict] = []
    bad = 0
    files = sorted((run_dir / "eval").glob("**/episodes*.jsonl"))
    for f in files:
        lines, n_bad = read_jsonl(f)
        bad += n_bad
        for r in lines:
            r = {**r, "memory": r.get("memory") or "none", "_source": f.parent}
            missing = [k for k in ("suite", "task_id", "init_index", "success") if k not in r]
            if missing:
                raise ValueError(f"an episode in {f} lacks {missing}; expected the closed-loop episode fields, "
                                 f"got {sorted(r)}.")
            try:
                outcome(r)
            except ValueError as e:
                raise ValueError(f"an episode in {f}: {e}") from None
            recs.append(r)
    finished, errors = resolve(recs)  # the first finished line per key; a resumed evaluator may rewrite it
    first = {episode_key(r): r for r in finished}
    repeats = [r for r in recs if not is_error(r) and first[episode_key(r)] is not r]
    conflicts = sum(outcome(r) != outcome(first[episode_key(r)]) for r in repeats)
    retried = sum(1 for r in recs if is_error(r) and episode_key(r) in first)
    evals = [_eval_folder(d, [r for r in finished if r["_source"] == d])
             for d in sorted({f.parent for f in files})]
    return {"episodes": finished, "errors": errors, "retried_errors": retried, "files": files,
            "duplicates": len(repeats), "conflicts": conflicts, "bad_lines": bad, "evals": evals}


def _eval_folder(folder: Path, episodes: list[dict]) -> dict:
    """One eval folder's overlap check from its settings.json (None when the evaluation predates the check) and the
    episodes it evaluated despite an overlap with the training starts (train_overlap)."""
    settings, note = folder / "settings.json", None
    overlap = None
    if not settings.exists():
        note = "no settings.json"
    else:
        try:
            data = json.loads(settings.read_text())
        except json.JSONDecodeError:
            data, note = {}, "settings.json unreadable"
        overlap = data.get("overlap") if isinstance(data, dict) else None
        if not isinstance(overlap, dict):
            overlap, note = None, note or "settings.json has no overlap record: evaluated before the check existed"
    flagged = sorted(((e["suite"], e["task_id"], e["init_index"], e["memory"]) for e in episodes
                      if e.get("train_overlap")), key=repr)
    return {"dir": folder, "overlap": overlap, "note": note, "train_overlap": flagged}


def load_run(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; expected a training run folder with config.json.")
    cfg = _read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    metrics = read_jsonl(run_dir / "metrics.jsonl")[0]
    offline_path = run_dir / "eval_offline_val.json"
    probe_path = run_dir / "probe.json"  # `world-modality probe --checkpoint RUN`
    return {"dir": run_dir, "name": cfg.get("preset") or run_dir.name, "preset": cfg.get("preset") or run_dir.name,
            "config": cfg, "metrics": metrics, "probe": _read_json(probe_path) if probe_path.exists() else None,
            "offline": _read_json(offline_path) if offline_path.exists() else None, **load_episodes(run_dir),
            "videos": sorted((run_dir / "eval").glob("*/videos/*.mp4")),
            "strips": sorted((run_dir / "eval").glob("*/videos/*.png"))}


def _headline_mode(run: dict) -> str | None:
    """The memory mode the policy runs with when deployed: the config's, else predicted, else none."""
    modes = Counter(e["memory"] for e in run["episodes"] + run["errors"])
    if not modes:
        return None
    configured = run["config"].get("policy", {}).get("memory_mode")
    for m in (configured, "predicted", "none"):
        if m in modes:
            return m
    return modes.most_common(1)[0][0]


def _cell(c: dict) -> str:
    errors = f"+{c['errors']} error{'s' * (c['errors'] != 1)}" if c.get("errors") else ""
    if not c["n"]:
        return f"– ({errors})" if errors else "–"
    return f"{c['k']}/{c['n']} = {_pct(c['rate'])} {_ci(c['ci'])}" + (f" ({errors})" if errors else "")


def _fmt(x, spec=".4f") -> str:
    return "–" if x is None else format(x, spec)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _video_frames(path: Path, n: int = 6) -> tuple[list[np.ndarray], list[str]]:
    import av

    with av.open(str(path)) as container:
        decoded = [(f.to_ndarray(format="rgb24"), f.time) for f in container.decode(video=0)]
    if not decoded:
        raise ValueError(f"{path} has no video frames.")
    idx = np.unique(np.linspace(0, len(decoded) - 1, n).round().astype(int))
    labels = [f"frame {i + 1}/{len(decoded)}" + (f" · {decoded[i][1]:.1f} s" if decoded[i][1] is not None else "") for i in idx]
    return [decoded[i][0] for i in idx], labels


def _video_outcome(path: Path, episodes: list[dict]) -> tuple[bool | None, dict | None]:
    """Success of the episode a video shows: a record's "video" field, else task/init numbers in the file name
    (episodes of the same eval folder first), else "ok"/"success"/"fail" in the name; None when nothing matches."""
    stem = path.stem.lower()
    task, init = re.search(r"task[_-]?(\d+)", stem), re.search(r"init(?:_index)?[_-]?(\d+)", stem)
    same = [e for e in episodes if e["_source"] == path.parent.parent]
    hits = [e for e in same + episodes if e.get("video") and Path(e["video"]).name == path.name]
    if not hits and task and init:
        hits = [e for e in same + episodes if e["task_id"] == int(task.group(1)) and e["init_index"] == int(init.group(1))]
    if hits:
        return bool(hits[0]["success"]), hits[0]
    return (False if "fail" in stem else True if "succ" in stem or stem.endswith("_ok") else None), None


def _render_md(blocks: list[tuple]) -> str:
    def one(b: tuple) -> str:
        if b[0] == "table":
            rows = [b[1], ["---"] * len(b[1]), *b[2]]
            return "\n".join("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows)
        return {"h": lambda: "#" * b[1] + " " + b[2], "p": lambda: b[1], "list": lambda: "\n".join(f"- {x}" for x in b[1]),
                "img": lambda: f"![{b[2]}]({b[1]})", "warn": lambda: f"> **WARNING:** {b[1]}"}[b[0]]()
    return "\n\n".join(one(b) for b in blocks) + "\n"


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
       "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
       "th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
       "h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:1.6em}"
       ".warn{border:2px solid #c00;background:#fee;color:#900;padding:.5em 1em;font-weight:600}")


def _render_html(blocks: list[tuple], title: str) -> str:
    e = html.escape

    def one(b: tuple) -> str:
        if b[0] == "table":
            head = "".join(f"<th>{e(str(c))}</th>" for c in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return {"h": lambda: f"<h{b[1]}>{e(b[2])}</h{b[1]}>", "p": lambda: f"<p>{e(b[1])}</p>",
                "list": lambda: "<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>",
                "img": lambda: f"<figure><img src='{e(b[1])}' alt='{e(b[2])}'><figcaption>{e(b[2])}</figcaption></figure>",
                "warn": lambda: f"<p class='warn'>WARNING: {e(b[1])}</p>"}[b[0]]()
    head = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style></head><body>"
    return "\n".join([head, *map(one, blocks)]) + "\n</body></html>\n"


def _choose_compare(runs: list[dict], compare: tuple[str, str] | None, multi: bool) -> tuple[str, str] | None:
    """The two runs of the per-run comparison; None where compare names multi-seed presets or, by default, in a sweep."""
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


def _mode_order(modes) -> list[str]:
    """Memory modes as columns: "none" (E0, no memory) first, then MEMORY_MODES order (predicted, present, the
    ablations), then any other."""
    from ..config import MEMORY_MODES

    order = {"none": -1, **{m: i for i, m in enumerate(MEMORY_MODES)}}
    return sorted(set(modes), key=lambda m: (order.get(m, len(MEMORY_MODES)), str(m)))


def _bar(o: dict) -> dict:
    return {"rate": o["rate"], "lo": o["ci"][0], "hi": o["ci"][1], "n": o["n"], "k": o["k"]}


def _summary_blocks(runs: list[dict], evald: list[dict], pair, pooled_pair=None) -> list[tuple]:
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
        text += f"The paired A/B comparison is {pair[1]} against {pair[0]} over identical (suite, task, initial state) episodes. "
    if pooled_pair:
        text += (f"Runs sharing a preset are training seeds; {pooled_pair[1]} is compared with {pooled_pair[0]} pooled over "
                 "seeds, on (training seed, suite, task, initial state) pairs. ")
    text += ("Rates carry 95% Wilson intervals over finished episodes; episodes that ended in an error (an exception, "
             "not the policy's failure) are counted apart and left out of every rate and comparison. Differences carry "
             "a bootstrap interval; p-values come from episode outcomes only (no p-values from step-level losses): "
             "an exact McNemar test per run and per training seed, and, pooled over training seeds, a cluster "
             "sign-flip permutation test over (suite, task, initial state). Each table names its test and interval.")
    notes = []
    for r in runs:
        if r["files"]:
            notes.append(f"{r['name']}: {len(r['files'])} episode file(s) merged; {r['duplicates']} duplicate episode line(s) "
                         f"counted once ({r['conflicts']} with a differing outcome; the first line kept)"
                         + (f"; {r['bad_lines']} unreadable line(s) skipped" if r["bad_lines"] else "")
                         + f"; {len(r['errors'])} episode(s) ended in an error and never finished (left out of rates)"
                         + f"; {r['retried_errors']} errored attempt(s) retried and finished"
                         + " (the finished one counts).")
        else:
            notes.append(f"{r['name']}: no closed-loop results.")
    rows = [[r["name"], r["dir"].name, len({m.get("epoch") for m in r["metrics"] if m.get("kind", "train") == "train"}),
             _fmt(next((m.get("action_loss") for m in reversed(r["metrics"]) if m.get("action_loss") is not None), None)),
             "yes" if r["offline"] else "no"] for r in runs]
    return [("p", text), ("h", 2, "Runs"),
            ("table", ["experiment", "run folder", "epochs logged", "final action loss", "offline eval"], rows), ("list", notes)]


def _success_blocks(evald: list[dict], out_dir: Path, images: list[Path]) -> list[tuple]:
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
        rows.append([r["name"], r["mode"], o["n"], o["k"], _pct(o["rate"]), _ci(o["ci"]), fails["timeout"], o["errors"],
                     fails["old_exception"]])
    images.append(plot_success_bars({r["name"]: _bar(r["summary"]["overall"]) for r in evald},
                                    out_dir / "success_overall.png", "Closed-loop success per experiment"))
    per_task = [r["summary"]["per_task"] for r in evald]
    tasks = sorted({k for pt in per_task for k in pt}, key=lambda t: (str(t[0]), t[1]))
    label = {k: pt[k]["task"] for pt in per_task for k in pt}
    trows = [[s, t, label[(s, t)]] + [_cell(pt[(s, t)]) if (s, t) in pt else "–" for pt in per_task] for s, t in tasks]
    per_suite = [r["summary"]["per_suite"] for r in evald]
    for s in sorted({s for ps in per_suite for s in ps}, key=str):
        trows.append([s, "all", "(suite)"] + [_cell(ps[s]) if s in ps else "–" for ps in per_suite])
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


def _overlap_warnings(runs: list[dict]) -> list[tuple]:
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


def _overlap_blocks(runs: list[dict], evald: list[dict]) -> list[tuple]:
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
                         f"{_fmt(dist, '.4g')} (tolerance {_fmt(tol, '.4g')})", _starts(ov.get("overlapping") or []),
                         _yes(ov.get("allowed")), len(ev["train_overlap"])])
    return blocks + [
        ("p", "Each evaluation compares its initial states with the training data's starts (settings.json "
              "\"overlap\"): a start within the tolerance of a training start overlaps, and is refused unless "
              "allowed, in which case its episodes are flagged train_overlap. Evaluations from before the check, or "
              "of a dataset that records no starts, say \"not checked\"."),
        ("table", ["experiment", "eval folder", "checked", "dataset", "training starts compared",
                   "min distance (tolerance)", "overlapping starts", "overlap allowed", "train_overlap episodes"],
         rows),
        *_overlap_warnings(evald)]


def _ablation_blocks(runs: list[dict], evald: list[dict], out_dir: Path, images: list[Path]) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Memory ablation")]
    if evald:
        cols = _mode_order(e["memory"] for r in evald for e in r["episodes"] + r["errors"])
        rows, groups = [], {}
        for r in evald:
            row = [r["name"]]
            for m in cols:
                eps = [e for e in r["episodes"] + r["errors"] if e["memory"] == m]
                o = summarize_episodes(eps)["overall"] if eps else None
                row.append(_cell(o) if o else "–")
                if o:
                    groups[f"{r['name']} · {m}"] = _bar(o)
            rows.append(row)
        blocks += [("p", "Closed-loop success per memory mode (k/n = rate [95% Wilson]):"), ("table", ["experiment"] + cols, rows)]
        if len(groups) > len(evald):  # only worth a figure when some experiment ran more than one mode
            images.append(plot_success_bars(groups, out_dir / "success_memory.png", "Closed-loop success per memory mode"))
            blocks.append(("img", "success_memory.png", "Closed-loop success per memory mode (95% Wilson intervals)"))
    else:
        blocks.append(("p", "No closed-loop results."))
    offl = [r for r in runs if r["offline"]]
    if not offl:
        return blocks + [("p", "No offline evaluation (eval_offline_val.json) found.")]
    cols = _mode_order(m for r in offl for m in r["offline"].get("action_mse", {}))
    return blocks + [("p", "Held-out (offline) action MSE per memory mode, normalised by the action std:"),
                     ("table", ["experiment"] + cols,
                      [[r["name"]] + [_fmt(r["offline"].get("action_mse", {}).get(m)) for m in cols] for r in offl])]


def _paired_blocks(runs: list[dict], pair, result: dict, multi: bool = False) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Paired comparison")]
    if not pair:
        return [] if multi else blocks + [("p", "No paired comparison: it needs two experiments with closed-loop results.")]
    ra, rb = (next(r for r in runs if r["name"] == n) for n in pair)
    (ka, xa), (kb, xb) = _pair_keys(ra["head"], ra["head_errors"]), _pair_keys(rb["head"], rb["head_errors"])
    if not usable_pairs(ka, kb):
        return blocks + [("p", f"No paired comparison: {pair[0]} and {pair[1]} share no finished closed-loop "
                               "(suite, task, initial state) episodes.")]
    pc = paired_comparison(ka, kb)
    result["paired"] = {"a": pair[0], "b": pair[1], **pc}
    row = [pc["n_pairs"], f"{pc['success_a']} ({_pct(pc['rate_a'])})", f"{pc['success_b']} ({_pct(pc['rate_b'])})",
           f"{100 * pc['diff']:+.1f} pp", _interval(pc["diff_ci"]), pc["diff_ci_method"], pc["b_only"], pc["a_only"],
           f"{pc['p']:.4g}", pc["test"]]
    left = (f"Episodes without a partner were left out: {pc['unpaired_keys']['a']} of {pair[0]}, {pc['unpaired_keys']['b']} of "
            f"{pair[1]}; pairs left out because an episode ended in an error on either side: {pc['error_pairs']}"
            + (f"; extra seeds at one initial state (lowest seed kept): {xa} of {pair[0]}, {xb} of {pair[1]}."
               if xa or xb else "."))
    return blocks + [
        ("p", f"{pair[1]} (memory {rb['mode']}) against {pair[0]} (memory {ra['mode']}) on {pc['n_pairs']} identical "
              f"(suite, task, initial state) episodes. Difference = {pair[1]} − {pair[0]}."),
        ("table", ["pairs", f"{pair[0]} success", f"{pair[1]} success", "difference", "95% interval", "interval method",
                   f"{pair[1]} only", f"{pair[0]} only", "p", "test"], [row]), ("p", left)]


def _offline_vs_closed_blocks(runs: list[dict]) -> list[tuple]:
    rows = []
    for r in runs:
        off = r["offline"] or {}
        mse = off.get("action_mse", {})
        mode = r["mode"] if r["mode"] in mse else next((m for m in ("predicted", "none") if m in mse), next(iter(mse), None))
        o = r["summary"]["overall"] if r["summary"] else None
        rows.append([r["name"], f"{_fmt(mse.get(mode))} ({mode})" if mode else "–", _fmt(off.get("world_mse")),
                     _fmt(off.get("world_skill"), "+.3f"),
                     f"{_pct(o['rate'])} {_ci(o['ci'])} (n={o['n']})" if o else "no closed-loop results"])
    return [("h", 2, "Offline metric vs closed-loop success"),
            ("table", ["experiment", "held-out action MSE (memory)", "world MSE", "world skill vs copy-last",
                       "closed-loop success"], rows), ("p", OFFLINE_CAVEAT)]


def _probe_blocks(runs: list[dict]) -> list[tuple]:
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


def _strip_blocks(runs: list[dict], out_dir: Path, images: list[Path]) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Frame strips")]
    for r in runs:
        picked = {}
        for v in r["videos"]:
            ok, ep = _video_outcome(v, r["episodes"])
            if ok is not None and ok not in picked:
                picked[ok] = (v, ep)
        for ok in (True, False):
            if ok not in picked:
                continue
            (v, ep), what = picked[ok], "success" if ok else "failure"
            try:
                frames, labels = _video_frames(v)
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
    result: dict = {"experiments": {}, "paired": None, "duplicates": {}, "images": images, "pooled": {}, "paired_pooled": None}
    for r in runs:
        r["mode"] = _headline_mode(r)
        r["head"] = [e for e in r["episodes"] if e["memory"] == r["mode"]]
        r["head_errors"] = [e for e in r["errors"] if e["memory"] == r["mode"]]
        r["summary"] = summarize_episodes(r["head"] + r["head_errors"]) if r["head"] or r["head_errors"] else None
        result["duplicates"][r["name"]] = r["duplicates"]
        if r["summary"]:
            o = r["summary"]["overall"]
            result["experiments"][r["name"]] = {"memory": r["mode"], "n": o["n"], "k": o["k"], "rate": o["rate"],
                                                "ci": o["ci"], "errors": o["errors"]}
    evald = [r for r in runs if r["episodes"] or r["errors"]]
    result["overlap"] = {r["name"]: [{"eval": ev["dir"].name, "overlap": ev["overlap"], "note": ev["note"],
                                      "train_overlap": ev["train_overlap"]} for ev in r["evals"]] for r in evald}
    pair = _choose_compare(runs, compare, multi)
    result["pooled"], ppair = pool_runs(runs), choose_pooled_pair(runs, compare)
    result["paired_pooled"] = pooled_paired(runs, ppair) if ppair else None

    blocks: list[tuple] = [("h", 1, "World-modality evaluation report"), *_overlap_warnings(evald),
                           *_summary_blocks(runs, evald, pair, ppair if multi else None), ("h", 2, "Training curves")]
    if any(r["metrics"] for r in runs):
        images.append(plot_training_curves({r["name"]: r["metrics"] for r in runs}, out_dir / "training_curves.png"))
        blocks += [("img", "training_curves.png", "Training curves: action loss, world loss, tanh(gate) per epoch"),
                   ("p", "Per-epoch training-set means; they describe optimisation, not which policy is better.")]
    else:
        blocks.append(("p", "No metrics.jsonl found in any run."))
    blocks += _success_blocks(evald, out_dir, images)
    blocks += _overlap_blocks(runs, evald)
    if multi:
        blocks += pooled_blocks(runs, result["pooled"], out_dir, images)
    blocks += _ablation_blocks(runs, evald, out_dir, images)
    blocks += _paired_blocks(runs, pair, result, multi)
    if multi:
        blocks += pooled_paired_blocks(ppair, result["paired_pooled"])
    blocks += _offline_vs_closed_blocks(runs)
    blocks += _probe_blocks(runs)
    blocks += _strip_blocks(runs, out_dir, images)

    md, htm = out_dir / "report.md", out_dir / "report.html"
    md.write_text(_render_md(blocks))
    htm.write_text(_render_html(blocks, "World-modality evaluation report"))
    result.update({"report_md": md, "report_html": htm, "compare": pair, "compare_pooled": ppair})
    return result
