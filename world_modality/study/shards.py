"""`--shard i/n`: which whole runs (training and every evaluation of it) the i-th of n shards holds, stated in its
folder before anything runs, and the files a shard leaves for `study merge` (its report inputs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

SHARD_FILE = "shard.json"
INPUTS_FILE = "report_inputs.json"
IGNORE_FILE = ".gitignore"
RULE = (
    "the study's runs (training suite, experiment, seed), sorted; shard i of n (counted from 1) holds runs i, i+n, "
    "i+2n, ... of that list"
)
# What a results folder may leave out: large, and rebuilt from study_settings.json by a rerun of the shard's
# command, then checked against artifacts.json before use. Videos are ignored file by file, not as a folder, so
# the few the report shows (videos.py) can be kept: git cannot keep a file inside an ignored folder.
LARGE = (
    "data/",
    "runs/*/*/checkpoints/",
    "runs/*/*/tensorboard/",
    "runs/*/*/eval/*/videos/*",
    ".lock",
    "*.tmp",
)
IGNORE_HEADER = "# Large artifacts: rebuilt from study_settings.json by rerunning this folder's command"


def study_runs(s) -> list[tuple[str, str, int]]:
    """Every run of the study, sorted: ("joint", experiment, seed) with --joint, else (suite, experiment, seed); and
    ("external", name, 0), each external arm's one run."""
    from .external_arms import runs

    groups = ("joint",) if s.joint else s.suites
    return sorted([*((g, e, seed) for g in groups for e in s.experiments for seed in s.seeds), *runs(s)])


def shard_runs(s, shard: tuple[int, int] | None) -> list[tuple[str, str, int]]:
    """The runs shard (i, n) holds (RULE); None: all of them."""
    runs = study_runs(s)
    if shard is None:
        return runs
    i, n = shard
    return runs[i - 1 :: n]


def run_name(run) -> str:
    return "/".join(map(str, run))


def parse_shard(text: str, n_runs: int) -> tuple[int, int]:
    """(i, n) of `--shard i/n`; refused unless 1 <= i <= n <= n_runs (an empty shard would run nothing)."""
    from ..config import ConfigError

    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--shard {text!r}: expected i/n, the i-th of n shards counted from 1, e.g. 1/4.")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ConfigError(
            f"--shard {text!r}: expected i/n with 1 <= i <= n (shards are counted from 1: 1/{max(n, 1)} to "
            f"{max(n, 1)}/{max(n, 1)})."
        )
    if n > n_runs:
        raise ConfigError(
            f"--shard {text!r}: the study has {n_runs} run(s) (suite, experiment, seed) and a shard holds whole "
            f"runs; expected n <= {n_runs}."
        )
    return i, n


def shard_text(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def check_same_shard(s) -> list[tuple]:
    """Write <out>/shard.json (which runs this folder holds, and the rule that chose them) and the .gitignore that
    keeps large artifacts out of a repository; refuse a folder that holds another shard. Returns the runs."""
    from ..config import ConfigError

    out = Path(s.out)
    path = out / SHARD_FILE
    runs = shard_runs(s, s.shard)
    mine = {"shard": shard_text(s.shard), "rule": RULE, "runs": [list(r) for r in runs]}
    if path.exists():
        old = read_json(path, "the shard record this command writes")
        if old.get("shard") != mine["shard"]:
            said = f"--shard {old['shard']}" if old.get("shard") else "the whole study (no --shard)"
            now = f"--shard {mine['shard']}" if mine["shard"] else "the whole study"
            raise ConfigError(f"{out} holds {said}, not {now}; rerun with {said} to continue it, or use another --out.")
    elif (out / "times.json").exists() and s.shard is not None:
        # A folder begun before shards existed ran the whole study.
        raise ConfigError(f"{out} holds the whole study (no --shard), not --shard {mine['shard']}; use another --out.")
    write_json(path, mine)
    write_ignore(s, runs)
    return runs


def write_ignore(s, runs: list[tuple]) -> None:
    """<out>/.gitignore: the large artifacts, less the videos the report shows. Rewritten while it is the one this
    command wrote (a folder begun before videos were kept gets the kept ones); one a person wrote is left alone."""
    from .videos import ignore_exceptions

    ignore = Path(s.out) / IGNORE_FILE
    if ignore.exists() and not ignore.read_text().startswith(IGNORE_HEADER):
        return
    kept = ignore_exceptions(s, runs)
    text = (
        f"{IGNORE_HEADER}\n"
        "# (invocations.jsonl), and checked against the hashes in artifacts.json before use.\n"
        + "\n".join(LARGE)
        + "\n"
        + ("# The rollout videos report.md shows: small, and kept beside the numbers.\n" if kept else "")
        + "".join(f"{line}\n" for line in kept)
    )
    ignore.write_text(text)


def write_inputs(s, runs: list[tuple], run: dict) -> None:
    """<out>/report_inputs.json: everything report.md is built from (generations, evaluations with their episodes,
    failed stages, stage times), for `study merge`."""
    # Compact: it holds every episode record, and a results folder is meant to stay small.
    data = {"shard": shard_text(s.shard), "runs": [list(r) for r in runs], **run}
    write_json(Path(s.out) / INPUTS_FILE, data, indent=None)


def read_json(path: Path, what: str) -> dict:
    from ..config import ConfigError

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({type(e).__name__}: {e}); expected {what}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {type(data).__name__}; expected {what} (a JSON object).")
    return data


def write_json(path: Path, data: dict, indent: int | None = 2) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    tmp.replace(path)


def missing_line(missing: list[dict]) -> str:
    """The warning a merged report opens with when the shards given leave runs out."""
    named = ", ".join(m["run"] + (f" (shard {m['shard']})" if m.get("shard") else "") for m in missing)
    return (
        f"Incomplete: {len(missing)} run(s) missing, held by no shard given: {named}. Their cells say so; merge "
        "again with the shard folders that hold them."
    )


def render_shards(shards: list[dict]) -> list[str]:
    lines = [
        "",
        "## Shards",
        "",
        "The folders this report was merged from, the runs each held and the code commits that ran them (its "
        "invocations and stage records).",
        "",
        "| Folder | Shard | Runs | Commits |",
        "|---|---|---|---|",
    ]
    for sh in shards:
        lines.append(
            f"| {sh['folder']} | {sh['shard'] or 'whole study'} | {', '.join(sh['runs']) or 'none'} | "
            f"{', '.join(sh['commits']) or 'not recorded'} |"
        )
    return lines
