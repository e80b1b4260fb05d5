"""`world-modality study merge DIR... --out DIR`: one report.md and study.json from the folders of a study's shards,
read from their small files only (so a shard folder copied or moved to another machine merges): shards of other
settings, two shards that ran the same episode, datasets of another fingerprint and pretrained world encoders of
another hash are refused; runs that no shard holds are named, their cells marked, and the merge exits non-zero."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import ConfigError
from .settings import SETTINGS_FILE, StudySettings


@dataclass
class ShardFolder:
    folder: Path  # as given on the command line
    settings: dict  # study_settings.json: the study's identity
    shard: str | None  # "i/n", or None for a whole study
    runs: list[tuple]  # the (training suite, experiment, seed) runs it held
    inputs: dict  # report_inputs.json: suites, evals, failed, times
    datasets: dict  # artifacts.json's dataset fingerprints
    invocations: list[dict]
    encoders: dict = field(default_factory=dict)  # artifacts.json's pretrained world encoders' hashes


def read_shard(folder: Path) -> ShardFolder:
    """A shard's folder, every file checked: what is missing or unreadable is named."""
    from .artifacts import ARTIFACTS_FILE
    from .settings import _read_settings, invocations
    from .shards import INPUTS_FILE, read_json

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; expected the --out folder of a `world-modality study --shard`.")
    if not (folder / SETTINGS_FILE).exists():
        raise ConfigError(
            f"{folder} holds no {SETTINGS_FILE}; expected the --out folder of a `world-modality study --shard`."
        )
    path = folder / INPUTS_FILE
    if not path.exists():
        raise ConfigError(
            f"{path} is missing: that shard has not finished a run of its command. Run it again (its command is in "
            f"{folder / 'invocations.jsonl'}), or leave the folder out (its runs are then reported missing)."
        )
    inputs = read_json(path, "the report inputs a study shard writes")
    kinds = {"runs": list, "suites": dict, "evals": list, "failed": list, "times": dict}
    bad = [k for k, kind in kinds.items() if not isinstance(inputs.get(k), kind)]
    if bad:
        raise ConfigError(f"{path} is damaged: {', '.join(bad)} missing or of another type; rerun the shard's command.")
    artifacts = folder / ARTIFACTS_FILE
    hashes = read_json(artifacts, "the artifact hashes") if artifacts.exists() else {}
    return ShardFolder(
        folder=folder,
        settings=_read_settings(folder / SETTINGS_FILE),
        shard=inputs.get("shard"),
        runs=[tuple(r) for r in inputs["runs"]],
        inputs=inputs,
        datasets=hashes.get("datasets") or {},
        invocations=invocations(folder),
        encoders=hashes.get("world_encoders") or {},
    )


def settings_of(sh: ShardFolder, out: Path) -> StudySettings:
    """The study's settings from a shard's identity; what the identity leaves out (workers, folders) changes no
    number of the report."""
    names = {f.name for f in fields(StudySettings)}
    unknown = sorted(set(sh.settings) - names)
    if unknown:
        raise ConfigError(
            f"{sh.folder / SETTINGS_FILE} names settings this version does not know ({', '.join(unknown)}); merge "
            "with the version that ran the shard."
        )
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in sh.settings.items()}
    if "external_arms" in given:
        from .external_arms import from_identity

        given["external_arms"] = from_identity(given["external_arms"], sh.folder / SETTINGS_FILE)
    try:
        return StudySettings(**{**given, "workers": 1, "out": str(out), "data": "", "shard": None})
    except TypeError as e:
        raise ConfigError(
            f"{sh.folder / SETTINGS_FILE} lacks a study setting ({e}); rerun the shard's command."
        ) from None


def check_same_study(shards: list[ShardFolder]) -> None:
    from .settings import _flag, _shown

    first = shards[0]
    for sh in shards[1:]:
        if sh.settings != first.settings:
            keys = set(sh.settings) | set(first.settings)
            diff = sorted(k for k in keys if sh.settings.get(k) != first.settings.get(k))
            said = "; ".join(
                f"{_flag(k)}: {_shown(first.settings, k)} in {first.folder}, {_shown(sh.settings, k)} in {sh.folder}"
                for k in diff
            )
            raise ConfigError(
                f"{first.folder} and {sh.folder} are shards of studies with other settings ({said}); merge only "
                "the shards of one study."
            )


def check_same_datasets(shards: list[ShardFolder]) -> None:
    """Each suite's dataset has one fingerprint across the shards (each may have generated its own)."""
    from ..toolchain import differences
    from .artifacts import last_toolchain

    seen: dict[str, tuple[str, Path, dict]] = {}
    for sh in shards:
        for suite, rec in sh.datasets.items():
            fp = rec.get("fingerprint") if isinstance(rec, dict) else None
            if fp is None:
                continue
            if suite in seen and seen[suite][0] != fp:
                moved = differences(
                    last_toolchain(rec.get("toolchains")),
                    last_toolchain(seen[suite][2].get("toolchains")),
                    str(sh.folder),
                    str(seen[suite][1]),
                )
                raise ConfigError(
                    f"the shards trained on different {suite} datasets: fingerprint {seen[suite][0]} in "
                    f"{seen[suite][1]}, {fp} in {sh.folder} (their artifacts.json); a table over both would mix "
                    f"two datasets. The software that generated them: {'; '.join(moved) or 'the same versions'}. "
                    "Rerun one shard on the other's dataset (--data), then merge."
                )
            seen.setdefault(suite, (fp, sh.folder, rec))


def check_same_encoders(shards: list[ShardFolder]) -> None:
    """Each training dataset's pretrained world encoder has one hash across the shards: pretraining repeats bit for
    bit only on one machine with one thread count, so shards that each pretrained their own may differ."""
    seen: dict[str, tuple[dict, Path]] = {}
    for sh in shards:
        for suite, rec in sh.encoders.items():
            sha = rec.get("sha256") if isinstance(rec, dict) else None
            if not sha:
                continue
            if suite in seen and seen[suite][0] != sha:
                first, where = seen[suite]
                raise ConfigError(
                    f"the shards used different pretrained world encoders for {suite}: model.safetensors sha256 "
                    f"{str(first.get('model.safetensors'))[:16]} in {where}, {str(sha.get('model.safetensors'))[:16]} "
                    f"in {sh.folder} (their artifacts.json); a table over both would mix two encoders. Rerun one "
                    "shard with the other's encoder (its --data holding that world-encoders/ folder), then merge."
                )
            seen.setdefault(suite, (sha, sh.folder))


def check_disjoint(shards: list[ShardFolder]) -> None:
    """No episode and no run in two shards: which copy to keep is not merge's to choose."""
    from .shards import run_name

    where: dict[Path, Path] = {}
    for sh in shards:
        key = sh.folder.resolve()
        if key in where:
            raise ConfigError(f"{sh.folder} is given twice (also as {where[key]}); give each shard folder once.")
        where[key] = sh.folder
    episodes: dict[tuple, Path] = {}
    for sh in shards:
        for r in sh.inputs["evals"]:
            run = (r["train_suite"], r["experiment"], r["seed"])
            for e in [*r.get("episodes", []), *r.get("errors", [])]:
                k = (*run, e.get("suite"), e.get("task_id"), e.get("init_index"))
                if k in episodes and episodes[k] != sh.folder:
                    raise ConfigError(
                        f"{episodes[k]} and {sh.folder} both ran episode {run_name(k[:3])} on {k[3]} task {k[4]}, "
                        f"initial state {k[5]}; merge keeps no copy over another: give only one of them."
                    )
                episodes[k] = sh.folder
    runs: dict[tuple, Path] = {}
    for sh in shards:
        for run in sh.runs:
            if run in runs:
                raise ConfigError(
                    f"{runs[run]} and {sh.folder} both hold run {run_name(run)}; merge keeps no copy over another: "
                    "give only one of them."
                )
            runs[run] = sh.folder


def merge_runs(s: StudySettings, shards: list[ShardFolder]) -> dict:
    """The shards' report inputs as one study's: in the order an unsharded study writes them, each runs' stage times
    summed, and a "not_run" record for every evaluation of a run that no shard holds."""
    from .shards import run_name, study_runs
    from .stages import plan

    order = {("/".join(map(str, st))): i for i, st in enumerate(plan(s))}
    suites: dict[str, dict] = {}
    for sh in shards:
        for suite, g in sh.inputs["suites"].items():
            if suite not in suites or ("dataset" in g and "dataset" not in suites[suite]):
                suites[suite] = dict(g)
            # Only shards with a run that uses the pretrained encoder have its record; a finished one wins.
            if "not_run" not in g.get("world_encoder", {"not_run": None}):
                suites[suite]["world_encoder"] = g["world_encoder"]
    evals = [_relocated(r, sh.folder, s.out) for sh in shards for r in sh.inputs["evals"]]
    held = {run for sh in shards for run in sh.runs}
    # Which shard holds a missing run can be told only when every shard given split the study into the same n.
    ns = {sh.shard.split("/")[1] for sh in shards if sh.shard}
    n = int(ns.pop()) if len(ns) == 1 and all(sh.shard for sh in shards) else None
    every = study_runs(s)
    missing = []
    for run in every:
        if run in held:
            continue
        missing.append({"run": run_name(run), "shard": f"{every.index(run) % n + 1}/{n}" if n else None})
        why = "no shard given holds this run"
        evals += [
            {"train_suite": st[1], "experiment": st[2], "seed": st[3], "suite": st[4], "not_run": why}
            for st in plan(s)
            if st[0] == "eval" and st[1:4] == run
        ]
    evals.sort(key=lambda r: order.get(f"eval/{r['train_suite']}/{r['experiment']}/{r['seed']}/{r['suite']}", 1 << 30))
    times: dict[str, float] = {}
    for sh in shards:
        for name, sec in sh.inputs["times"].items():
            times[name] = round(times.get(name, 0.0) + float(sec), 2)
    times = dict(sorted(times.items(), key=lambda kv: order.get(kv[0], 1 << 30)))
    failed = list(dict.fromkeys(f for sh in shards for f in sh.inputs["failed"]))
    ordered = {k: suites[k] for k in (*s.suites, "joint") if k in suites}
    return {"suites": ordered, "evals": evals, "failed": failed, "times": times, "missing": missing}


def _relocated(record: dict, folder: Path, out: str) -> dict:
    """An evaluation record whose kept videos' paths (under its shard folder) are made relative to the merged
    report's folder, so its links still open."""
    import os

    if not record.get("videos"):
        return record
    moved = [{**v, "path": os.path.relpath(Path(folder) / v["path"], out)} for v in record["videos"]]
    return {**record, "videos": moved}


def shard_summary(sh: ShardFolder) -> dict:
    """The folder, its shard, its runs and every code commit that ran it (invocations and stage records)."""
    from .provenance import stage_commits
    from .shards import run_name

    stages = stage_commits(sh.inputs["suites"], sh.inputs["evals"])["commits"]
    commits = sorted({str(r.get("commit")) for r in sh.invocations if r.get("commit")} | set(stages))
    return {"folder": str(sh.folder), "shard": sh.shard, "runs": [run_name(r) for r in sh.runs], "commits": commits}


def merge(folders: list[Path], out: Path) -> int:
    """Write the merged report into `out`; 0 when the shards cover the study and none has a failed stage or an
    errored episode, else 1 (the report is written all the same, marked)."""
    from .shards import missing_line
    from .tables import write_report

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the merged report.")
    if (out / SETTINGS_FILE).exists():
        raise ConfigError(
            f"--out {out} is a study's folder (it holds {SETTINGS_FILE}); expected another folder for the merged "
            "report, so no study's own report is overwritten."
        )
    shards = [read_shard(Path(f)) for f in folders]
    check_same_study(shards)
    check_same_datasets(shards)
    check_same_encoders(shards)
    check_disjoint(shards)
    s = settings_of(shards[0], out)
    run = merge_runs(s, shards)
    summaries = [shard_summary(sh) for sh in shards]
    invocations = sorted((r for sh in shards for r in sh.invocations), key=lambda r: str(r.get("utc", "")))
    out.mkdir(parents=True, exist_ok=True)
    res = write_report(s, run, invocations, summaries)
    for sh in summaries:
        shard = f"shard {sh['shard']}" if sh["shard"] else "whole study"
        print(f"[study merge] {sh['folder']}: {shard}, commits {', '.join(sh['commits']) or 'not recorded'}")
    print(f"[study merge] report: {out}/report.md, numbers: {out}/study.json")
    problems = []
    if run["missing"]:
        problems.append(missing_line(run["missing"]))
    if res["errors"]:
        problems.append(f"{res['errors']} closed-loop episode(s) ended in an error; rerun their shards to retry them")
    if res["failed"]:
        problems.append(f"{len(res['failed'])} stage(s) failed: {'; '.join(res['failed'])}; rerun their shards")
    if problems:
        print(f"[study merge] ERROR: {' '.join(problems)}")
        return 1
    return 0


def merge_command(args) -> int:
    """`world-modality study merge`: flags of a study given before `merge` are refused, not silently dropped."""
    given = [k for k, v in args.study_defaults.items() if getattr(args, k, v) != v]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
        raise ConfigError(
            f"`study merge` takes shard folders and --out only, got study flags {flags}: the settings come from the "
            "shards' folders."
        )
    return merge(args.shards, args.merge_out)
