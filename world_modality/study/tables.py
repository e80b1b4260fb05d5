"""The study's report: the published layout (a row per experiment, naming its world encoder and backbone; Spatial,
Object, Goal, Long, Average; k/n with an interval that clusters a start's repeats over seeds, the starts and each
seed's k/n), the primary contrast per suite (conditional on these checkpoints and at method level), every
contrast, the same on states 10-49 alone when the study ran 0-49, the arms, the world-encoder pretraining, the
LIBERO-PRO table, the kept rollout videos and each stage's commit. Statistics come from analysis/ (stats, pooling,
levels)."""

from __future__ import annotations

import json
from pathlib import Path

from .external_arms import arms_of, seeds_of
from .settings import SUITE_COLUMNS, StudySettings, invocations


def _cell(rows: list[dict], missing: list[dict]) -> dict:
    """Seeds pooled over `rows` (each one run on one suite): k/n, the interval that counts a start's repeats over
    seeds as one cluster (levels.clustered_rate), the pooled Wilson interval kept apart and named, per-seed k/n,
    and the runs that contributed nothing with why. No finished episode: {"not_run": why}."""
    from ..analysis.levels import CLUSTERED_WILSON, clustered_rate
    from ..analysis.stats import wilson_interval

    clusters: dict[tuple, list[int]] = {}
    per_seed: dict = {}
    errors = 0
    for r in rows:
        seed = per_seed.setdefault(r["seed"], {"k": 0, "n": 0, "errors": 0})
        seed["errors"] += len(r.get("errors", []))
        errors += len(r.get("errors", []))
        for e in r.get("episodes", []):
            c = clusters.setdefault((e["suite"], e["task_id"], e["init_index"]), [0, 0])
            c[0] += bool(e.get("success"))
            c[1] += 1
            seed["k"] += bool(e.get("success"))
            seed["n"] += 1
    per_seed = {s: v for s, v in per_seed.items() if v["n"] or v["errors"]}
    if not clusters:
        why = f"all {errors} episodes ended in errors" if errors else _why(missing)
        return {"not_run": why, "errors": errors, "missing": missing}
    c = clustered_rate([v[0] for v in clusters.values()], [v[1] for v in clusters.values()])
    return {
        "k": c["k"],
        "n": c["n"],
        "rate": c["rate"],
        "ci": c["ci"],
        "ci_method": CLUSTERED_WILSON,
        "design_effect": c["design_effect"],
        "ci_pooled_wilson": list(wilson_interval(c["k"], c["n"])),
        "starts": c["clusters"],
        "seeds": sorted((s for s, v in per_seed.items() if v["n"]), key=str),
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "errors": errors,
        "missing": missing,
    }


def _why(missing: list[dict]) -> str:
    reasons = list(dict.fromkeys(m["why"] for m in missing))
    return reasons[0] if len(reasons) == 1 else "not run"


def _runs_of(s: StudySettings, evals: list[dict], experiment: str, targets: list[str], suites: dict) -> tuple:
    """The runs of one experiment on `targets` that have episodes or errors, and every (seed, suite) that has none,
    with why: its record's reason, its suite's generation's, or "not run"."""
    rows, missing = [], []
    for target in targets:
        base = target if target in SUITE_COLUMNS else target.rsplit("_", 1)[0]
        for seed in seeds_of(s, experiment):
            recs = [r for r in evals if (r["experiment"], r["seed"], r["suite"]) == (experiment, seed, target)]
            have = [r for r in recs if r.get("episodes") or r.get("errors")]
            rows += have
            if any(r.get("episodes") for r in have):
                continue
            if have:
                n = sum(len(r.get("errors", [])) for r in have)
                why = f"all {n} episodes ended in errors"
            elif any("not_run" in r for r in recs):
                why = next(r["not_run"] for r in recs if "not_run" in r)
            elif recs:
                why = "no episodes"
            else:
                why = suites.get(base, {}).get("not_run", "not run")
            missing.append({"seed": seed, "suite": target, "why": why})
    return rows, missing


def _suite_cell(s: StudySettings, evals: list[dict], experiment: str, targets: list[str], suites: dict) -> dict:
    rows, missing = _runs_of(s, evals, experiment, targets, suites)
    return _cell(rows, missing)


def arms(s: StudySettings, evals: list[dict], encoders: dict[str, dict] | None = None) -> dict:
    """Each experiment's world encoder, backbone, chunk and replanning interval: as its evaluations recorded them,
    else as the study's settings build it (the same preset and sizes); "world_encoder_ids": every encoder id its
    checkpoints recorded (one per training dataset for a pretrained encoder). `encoders`: the pretraining stage's
    records, which name a pretrained encoder no evaluation has described yet."""
    from .external_arms import arm_rows
    from .records import arm_of
    from .settings import run_config
    from .world_encoder import describe, encoder_of

    out = {}
    for e in s.experiments:
        seen = [r["arm"] for r in evals if r["experiment"] == e and r.get("arm")]
        if seen:
            built = dict(seen[0])
        else:
            built = arm_of(run_config(s, e, s.suites[0], s.seeds[0], Path("-"), Path("-")), None)
            if encoder_of(s, e) == "pretrained":  # its folder is not read here: named from the stage's record
                built["world_encoder"] = describe(next(iter((encoders or {}).values()), None))
        out[e] = built
        replans = sorted({a["replan_every"] for a in seen})
        if len(replans) > 1:
            out[e]["replan_every"] = ", ".join(map(str, replans))
        out[e]["world_encoder_ids"] = sorted({a["world_encoder_id"] for a in seen if a.get("world_encoder_id")})
    return {**out, **arm_rows(s, evals)}  # the external arms: their stated conventions


def results(s: StudySettings, run: dict) -> dict:
    """Every table's numbers, JSON-ready; a suite with no finished run carries its reason. "paired" is the primary
    contrast (as before there were several); "contrasts" lists them all."""
    from ..ids import format_ids
    from .contrasts import contrasts
    from .held_out import held_out_view, restrict
    from .provenance import stage_commits
    from .world_encoder import encoder_of

    evals, gens = run["evals"], run["suites"]
    standard = _standard(s, evals, gens)
    kinds = {e: encoder_of(s, e) for e in s.experiments}
    cs = contrasts(arms_of(s), s.suites, evals, kinds)
    paired = {k: cs[0][k] for k in ("a", "b", "per_suite", "average")} if cs else {}
    view = held_out_view(s)
    held_out = None
    if view is not None:
        kept = restrict(evals, s.suites, view)
        held_out = {
            "states": format_ids(view),
            "standard": _standard(s, kept, gens),
            "contrasts": contrasts(arms_of(s), s.suites, kept, kinds),
        }
    encoders = {suite: g["world_encoder"] for suite, g in gens.items() if "world_encoder" in g}
    # --dataset: where each training dataset's episodes came from, and whether evaluation could check its starts.
    training_data = {name: g["training_data"] for name, g in gens.items() if "training_data" in g}
    pro = {}
    for p in s.pro:
        for e in arms_of(s):
            pro[f"{p}/{e}"] = {suite: _suite_cell(s, evals, e, [f"{suite}_{p}"], gens) for suite in s.suites}
    suites = {suite: g for suite, g in gens.items() if suite in s.suites}  # not the --joint dataset
    zero = {suite: sorted(int(t) for t, n in g.get("demos", {}).items() if n == 0) for suite, g in suites.items()}
    errors = sum(len(r.get("errors", [])) for r in evals)
    return {
        "standard": standard,
        "paired": paired,
        "contrasts": cs,
        **({"held_out": held_out} if held_out else {}),
        "arms": arms(s, evals, encoders),
        "world_encoders": encoders,
        "videos": [
            {"experiment": r["experiment"], "seed": r["seed"], **v} for r in evals for v in r.get("videos") or []
        ],
        "pro": pro,
        "demonstrations": {suite: g.get("demos", {}) for suite, g in suites.items()},
        **({"training_data": training_data} if training_data else {}),
        "tasks_without_demonstrations": {k: v for k, v in zero.items() if v},
        "errors": errors,
        "failed": run["failed"],
        "provenance": stage_commits(gens, evals),
        # Only a merge of shards that leaves runs out has any (study merge).
        **({"missing_runs": run["missing"]} if run.get("missing") else {}),
    }


def _standard(s: StudySettings, evals: list[dict], gens: dict) -> dict[str, dict]:
    """The standard table's cells: per experiment, each suite run and the average over them."""
    standard: dict[str, dict] = {}
    for e in arms_of(s):
        row = {suite: _suite_cell(s, evals, e, [suite], gens) for suite in SUITE_COLUMNS if suite in s.suites}
        row["average"] = _suite_cell(s, evals, e, list(s.suites), gens)
        standard[e] = row
    return standard


def _fmt(c: dict, name_suite: bool = False) -> str:
    """k/n = rate [clustered interval]; starts; per-seed k/n; errors; every run missing from the pool and why."""
    if "not_run" in c:
        return "not run" if c["not_run"] == "not run" else f"not run ({c['not_run']})"
    lo, hi = c["ci"]
    text = f"{c['k']}/{c['n']} = {100 * c['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]; {c['starts']} starts; "
    text += ", ".join(f"seed {k}: {v['k']}/{v['n']}" for k, v in c.get("per_seed", {}).items() if v["n"])
    if c["errors"]:
        text += f" ({c['errors']} errors)"
    groups: dict[tuple, list] = {}
    for m in c.get("missing", []):
        groups.setdefault((m["suite"] if name_suite else None, m["why"]), []).append(str(m["seed"]))
    for (suite, why), seeds in groups.items():
        text += f"; seed{'s' * (len(seeds) > 1)} {', '.join(seeds)}" + (f" on {suite}" if suite else "")
        text += f" missing ({why})"
    return text


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
        "Summed over every invocation; world-encoder pretraining (pretrain) is counted apart from training. "
        + ", ".join(f"{k}: {v / 60:.1f} min" for k, v in kinds.items())
        + f"; all stages: {sum(seconds.values()) / 60:.1f} min.",
        "",
        "| Stage | Seconds |",
        "|---|---|",
    ]
    return lines + [f"| {name} | {sec:.0f} |" for name, sec in seconds.items()]


def _arms_table(res: dict) -> list[str]:
    lines = [
        "",
        "## Arms",
        "",
        "How each arm acts (chunk, replanning interval) belongs to the arm, not to the evaluation protocol: it may "
        "differ between two paired arms.",
        "",
        "The encoder weights column names which weights each arm's world stream has and the id (a hash of the "
        "weights) its checkpoints recorded: arms that share an id share the very encoder.",
        "",
        "| Experiment | World encoder | Backbone | Chunk (actions per call) | Replanning interval (frames) | Memory "
        "| Encoder weights (id) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e, a in res.get("arms", {}).items():
        weights = a.get("world_encoder_weights", "not recorded")
        ids = ", ".join(a.get("world_encoder_ids") or [])
        lines.append(
            f"| {e} | {a['world_encoder']} | {a['backbone']} | {a['chunk_size']} | {a['replan_every']} | "
            f"{a['memory_mode']} | {weights}{f' ({ids})' if ids else ''} |"
        )
    return lines


def _table_rows(standard: dict, arms: dict) -> list[str]:
    """The standard table's experiment rows."""
    cols = list(SUITE_COLUMNS)
    lines = []
    for e, row in standard.items():
        label = f"{e} (world: {arms[e]['world_encoder']}; backbone: {arms[e]['backbone']})" if e in arms else e
        label = f"{e} (external arm)" if arms.get(e, {}).get("external") else label
        cells = [_fmt(row[c]) if c in row else "not run" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(row['average'], name_suite=True)} |")
    return lines


def _held_out_section(view: dict | None) -> list[str]:
    from .contrasts import contrast_table

    if not view:
        return []
    cols = list(SUITE_COLUMNS)
    return [
        "",
        f"## Stored states {view['states']} alone",
        "",
        f"The same table and contrasts on each task's stored states {view['states']} only: the recipe was chosen on "
        "states 0-9, so these are the states it was never tuned on. LIBERO-PRO suites are left out; secondary "
        "contrasts are Holm-adjusted within this view.",
        "",
        "| Experiment | " + " | ".join(SUITE_COLUMNS[c] for c in cols) + " | Average |",
        "|---" * (len(cols) + 2) + "|",
        *_table_rows(view["standard"], {}),
        "",
        *contrast_table(view["contrasts"]),
    ]


def protocol_line(s: StudySettings) -> str:
    """What this study ran, against the public protocol (10 tasks, 50 stored states each, each suite's step limit):
    a table of a cut-down run must not pass for the benchmark's."""
    from ..ids import format_ids

    tasks = "all 10 tasks" if s.tasks is None else f"tasks {format_ids(s.tasks)} of 10"
    if s.init_states is not None:
        states = f"stored states {format_ids(s.init_states)}"
    elif s.episodes_per_task is not None:
        states = f"stored states 0-{s.episodes_per_task - 1}" if s.episodes_per_task > 1 else "stored state 0"
    else:
        states = "all 50 stored states"
    steps = "each suite's public step limit" if s.max_steps is None else f"a {s.max_steps}-step limit"
    ran = f"Protocol: {tasks}, {states} per task, {steps}; suites {', '.join(s.suites)}."
    public = s.tasks is None and s.init_states is None and s.episodes_per_task is None and s.max_steps is None
    if public and len(s.suites) == len(SUITE_COLUMNS):
        return ran + " This is the public protocol."
    return (
        f"**Smaller than the public protocol** (all four suites, all 10 tasks, all 50 stored states, each suite's "
        f"step limit): {ran[len('Protocol: ') :]} The Average column averages only the suites run."
    )


def few_starts_line(pair: dict | None) -> str | None:
    from ..analysis.levels import FEW_FOR_BOOTSTRAP

    n = (pair or {}).get("n_clusters")
    if n is None or n >= FEW_FOR_BOOTSTRAP:
        return None
    return (
        f"**Few starts:** the primary contrast rests on {n} distinct starts. A bootstrap interval over so few is "
        "unreliable (it can exclude 0 where the exact paired test does not, or have no width at all): read the p-value "
        "and the smallest detectable difference, not the interval."
    )


def render(
    s: StudySettings,
    res: dict,
    runs: list[dict] = (),
    seconds: dict[str, float] | None = None,
    shards: list[dict] | None = None,
) -> str:
    from .contrasts import fmt_conditional, fmt_method, render_contrasts
    from .external_arms import render as render_external
    from .provenance import across_commits, render_commits
    from .public_data import render as render_training_data
    from .shards import missing_line, render_shards
    from .videos import render_videos
    from .world_encoder import render_encoders

    cols = list(SUITE_COLUMNS)
    head = "| Experiment | " + " | ".join(SUITE_COLUMNS[c] for c in cols) + " | Average |"
    sep = "|---" * (len(cols) + 2) + "|"
    warning = across_commits(res.get("provenance", {}))
    lines = ["# Study: closed-loop success in LIBERO", ""] + ([f"**{warning}**", ""] if warning else [])
    if res.get("missing_runs"):
        lines += [f"**{missing_line(res['missing_runs'])}**", ""]
    lines += [protocol_line(s), ""]
    lines += [
        f"Training seeds {', '.join(map(str, s.seeds))}, pooled: a cell's n sums every seed's episodes, and each "
        "start (suite, task, initial state) is run once per seed, so n is not n independent trials. Cells: "
        "successes/episodes = rate [95% interval that treats a start's repeats as one cluster: Wilson at the "
        "effective n = n / design effect, the design effect measured from how a start's seeds agree]; the number "
        "of distinct starts; each seed's k/n; runs missing from the pool and why. The plain Wilson interval on the "
        "pooled n (as if every episode were independent) is in study.json as ci_pooled_wilson only. Average: all "
        "episodes of the suites run. Errored episodes are counted apart.",
        "",
        head,
        sep,
    ]
    lines += _table_rows(res["standard"], res.get("arms", {}))
    p = res["paired"]
    if p:
        for kind, fmt in (("paired, these checkpoints", fmt_conditional), ("method level", fmt_method)):
            cells = [fmt(p["per_suite"].get(c)) if c in p["per_suite"] else "not run" for c in cols]
            lines.append(f"| {p['b']} − {p['a']} ({kind}) | " + " | ".join(cells) + f" | {fmt(p['average'])} |")
        lines += [
            "",
            f'Primary contrast {p["b"]} − {p["a"]}, in points. "Paired, these checkpoints": conditional on the '
            "trained runs, over identical (suite, task, initial state) starts, seeds pooled; 95% cluster-bootstrap "
            'interval and cluster sign-flip p (cluster = start; analysis/pooling.py). "Method level": 95% '
            "two-level bootstrap that also draws each arm's training seeds again, independently per arm "
            "(analysis/levels.py); it is the one that speaks for the training method, and its p needs at least 3 "
            "seeds per arm.",
        ]
        few = few_starts_line(p.get("average"))
        lines += ["", few] if few else []
    lines += _arms_table(res)
    lines += render_external(res.get("arms", {}))
    lines += render_contrasts(res.get("contrasts", []))
    lines += _held_out_section(res.get("held_out"))
    lines += render_encoders(res.get("world_encoders") or {}, seconds or {})
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
    lines += render_training_data(res.get("training_data") or {})
    lines += ["", "## Demonstrations", ""]
    for suite, demos in res["demonstrations"].items():
        lines.append(f"- {suite}: " + (", ".join(f"task {t}: {n}" for t, n in demos.items()) or "none"))
    for suite, tasks in res["tasks_without_demonstrations"].items():
        lines.append(
            f"- {suite}: no demonstration for tasks {', '.join(map(str, tasks))} (the scripted expert "
            "failed every attempt)"
        )
    lines += render_videos(res.get("videos") or [])
    if res["failed"]:
        lines += ["", "## Stages that failed", ""] + [f"- {f}" for f in res["failed"]]
    lines += render_commits(res.get("provenance", {}))
    lines += render_shards(shards) if shards else []
    lines += _provenance(list(runs), seconds or {})
    return "\n".join(lines) + "\n"


def write_report(s: StudySettings, run: dict, runs: list[dict] | None = None, shards: list[dict] | None = None) -> dict:
    """report.md and study.json in s.out; `runs`: the invocations (default: the folder's), `shards`: the shard
    folders a merged report came from (study merge)."""
    res = results(s, run)
    out = Path(s.out)
    runs = invocations(out) if runs is None else runs
    (out / "report.md").write_text(render(s, res, runs, run["times"], shards))
    study = {"settings": s.identity(), "results": res, "seconds": run["times"], "invocations": runs}
    if shards:
        study["shards"] = shards
    (out / "study.json").write_text(json.dumps(study, indent=2, default=str) + "\n")
    return res
