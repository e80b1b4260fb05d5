"""The CPU recipe search on libero_spatial: one row per command, each a training and a closed-loop evaluation on
the tuning states, written into bench/results/recipe_libero_spatial.json (rows kept by name, so a search spans
sessions). A row changes one knob from a base row; `report` runs a chosen row on states it was never chosen on.

    python bench/recipe.py row R1 --dataset D --train "--preset E0 --max_epochs 12"
    python bench/recipe.py row R2 --from R1 --train "--image_size 64"           # one knob from R1
    python bench/recipe.py row R3 --from R1 --eval "--replan_every 2" --reuse   # R1's policy, another replanning
    python bench/recipe.py report R2 --states 10-49                             # held-out states, never tuned on
    python bench/recipe.py table                                                # the table, as docs/RESULTS.md has it

Tuning uses the benchmark's stored states 0-9 of every task (100 episodes); `report` runs other states of the same
tasks. Train minutes are the training command's wall time (latent encoding included; world pretraining apart)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS_DIR, ROOT, commit, host

SUITE, TASKS, TUNING_STATES = "libero_spatial", "0-9", "0-9"
RESULTS = RESULTS_DIR / "recipe_libero_spatial.json"
EPISODES_DIR = RESULTS_DIR / "recipe_libero_spatial"  # each evaluation's episodes.jsonl and settings.json
CLI = str(ROOT / ".venv" / "bin" / "world-modality")


def parse_flags(text: str) -> dict[str, str | None]:
    """'--max_epochs 12 --no-ema' -> {'--max_epochs': '12', '--no-ema': None}, in order."""
    words, out = shlex.split(text or ""), {}
    i = 0
    while i < len(words):
        if not words[i].startswith("--"):
            raise SystemExit(f"expected a flag (--name [value]) in {text!r}, got {words[i]!r}.")
        value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
        out[words[i]] = value
        i += 1 if value is None else 2
    return out


def flag_words(flags: dict[str, str | None]) -> list[str]:
    return [w for k, v in flags.items() for w in ((k,) if v is None else (k, v))]


def load() -> dict:
    if not RESULTS.exists():
        return {"benchmark": "recipe_libero_spatial", "rows": []}
    try:
        return json.loads(RESULTS.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{RESULTS} is not valid JSON ({e}); expected the recipe table this script writes.") from None


def save(data: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")


def find(data: dict, name: str) -> dict:
    for row in data["rows"]:
        if row["name"] == name:
            return row
    known = ", ".join(r["name"] for r in data["rows"]) or "none yet"
    raise SystemExit(f"no recipe row {name!r} in {RESULTS}; rows: {known}.")


def run(cmd: list[str], log: Path) -> float:
    """Run one command, its output to `log`; its wall seconds. A failure stops the row, naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    with log.open("a") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"exit status {code}: {shlex.join(cmd)} (output: {log})")
    return time.time() - t0


def evaluate(run_dir: Path, states: str, eval_flags: dict, out: Path, workers: int) -> tuple[dict, float, str]:
    """Closed-loop success on `states` of every task: ({k, n, errors, ci}, wall seconds, command)."""
    sys.path.insert(0, str(ROOT))
    from world_modality.analysis.stats import wilson_interval
    from world_modality.evaluate.episodes import resolve
    from world_modality.jsonl import read_jsonl

    cmd = [CLI, "eval", "--checkpoint", str(run_dir), "--suite", SUITE, "--tasks", TASKS, "--init_states", states]
    cmd += ["--workers", str(workers), "--out", str(out), *flag_words(eval_flags)]
    seconds = run(cmd, out.parent / f"{out.name}.log")
    records, _ = read_jsonl(out / "episodes.jsonl")
    keep_episodes(out)
    finished, errors = resolve(records)
    k, n = sum(bool(r["success"]) for r in finished), len(finished)
    lo, hi = wilson_interval(k, n)
    outcome = {"states": states, "k": k, "n": n, "errors": len(errors), "rate": k / n if n else None}
    outcome["ci95_wilson"] = [round(lo, 4), round(hi, 4)]
    outcome["per_task"] = {
        str(t): [
            sum(bool(r["success"]) for r in finished if r["task_id"] == t),
            sum(r["task_id"] == t for r in finished),
        ]
        for t in sorted({r["task_id"] for r in finished})
    }
    return outcome, seconds, shlex.join(cmd)


def keep_episodes(out: Path) -> None:
    """Copy an evaluation's episodes and settings (its identity and hashes) next to the results file: runs/ does not
    outlive a session, and a row is re-read or re-pooled from these."""
    import shutil

    kept = EPISODES_DIR / out.name
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("episodes.jsonl", "settings.json"):
        shutil.copy2(out / name, kept / name)


def cmd_row(args) -> None:
    data = load()
    base = find(data, args.base) if args.base else None
    train = {**(base["train_flags"] if base else {}), **parse_flags(args.train)}
    evalf = {**(base["eval_flags"] if base else {}), **parse_flags(args.eval)}
    dataset = args.dataset or (base["dataset"] if base else None)
    if not dataset:
        raise SystemExit("the first row needs --dataset (later rows take their base row's).")
    if "--preset" not in train:
        raise SystemExit("the training flags need --preset (E0 to tune; E2 with the winner).")
    runs = ROOT / "runs" / "recipe"
    if args.reuse:
        if not base or parse_flags(args.train):
            raise SystemExit("--reuse evaluates the base row's policy again: give --from and no --train.")
        run_dir, train_s, train_cmd = Path(base["run_dir"]), None, base["commands"]["train"]
    else:
        run_dir = runs / "runs" / args.name
        cmd = [CLI, "train", "--dataset", dataset, "--output_dir", str(run_dir), *flag_words(train)]
        train_s, train_cmd = run(cmd, runs / "logs" / f"{args.name}.train.log"), shlex.join(cmd)
    tuning, eval_s, eval_cmd = evaluate(run_dir, TUNING_STATES, evalf, runs / "eval" / args.name, args.workers)
    row = {
        "name": args.name,
        "from": args.base,
        "changed": {"train": parse_flags(args.train), "eval": parse_flags(args.eval), "reuse": args.reuse},
        "note": args.note,
        "dataset": dataset,
        "dataset_info": _dataset_summary(Path(dataset)),
        "train_flags": train,
        "eval_flags": evalf,
        "run_dir": str(run_dir),
        "train_minutes": None if train_s is None else round(train_s / 60, 1),
        "tuning": tuning,
        "eval_minutes": round(eval_s / 60, 1),
        "commands": {"train": train_cmd, "eval": eval_cmd},
        "commit": commit(),
        "host": host(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    data = load()  # another row may have finished meanwhile
    data["rows"] = [r for r in data["rows"] if r["name"] != args.name] + [row]
    save(data)
    print(format_row(row))


def cmd_report(args) -> None:
    row = find(load(), args.name)
    out = ROOT / "runs" / "recipe" / "eval" / f"{args.name}-states-{args.states}"
    outcome, eval_s, eval_cmd = evaluate(Path(row["run_dir"]), args.states, row["eval_flags"], out, args.workers)
    outcome.update(eval_minutes=round(eval_s / 60, 1), command=eval_cmd, commit=commit())
    keep_episodes(out)
    data = load()
    find(data, args.name).setdefault("reported", {})[args.states] = outcome
    save(data)
    print(f"{args.name} on states {args.states}: {_rate(outcome)}")


def _dataset_summary(root: Path) -> dict:
    """What a later session needs to rebuild the dataset and check it is the same (its fingerprint)."""
    sys.path.insert(0, str(ROOT))
    from world_modality.data.lerobot import load_dataset

    info = json.loads((root / "meta" / "info.json").read_text())
    src = info.get("source") or {}
    tasks = src.get("tasks") or []
    side = (info["features"].get("observation.images.image") or {}).get("shape", ["?"])[0]
    per_task = info.get("total_episodes", 0) // max(1, len(tasks))
    ids = ",".join(map(str, tasks))
    return {
        "fingerprint": load_dataset(root).fingerprint(),
        "generate": (
            f"world-modality generate --suite {SUITE} --tasks {ids} --episodes-per-task {per_task} --out {root} "
            f"--image-size {side} --workers 2 --seed {src.get('seed', 0)} "
            f"--render-profile {info.get('render_profile', 'libero')}"
        ),
        "episodes": info.get("total_episodes"),
        "frames": info.get("total_frames"),
        "tasks": tasks,
        "render_profile": info.get("render_profile", "libero (not recorded)"),
        "provenance": info.get("provenance"),
    }


def _rate(o: dict) -> str:
    lo, hi = o["ci95_wilson"]
    err = f", {o['errors']} errors" if o.get("errors") else ""
    return f"{o['k']}/{o['n']} = {100 * o['rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]{err}"


def format_row(row: dict) -> str:
    changed = " ".join(flag_words({**row["changed"]["train"], **row["changed"]["eval"]})) or "(base)"
    if row["changed"].get("reuse"):
        changed += " (same policy)"
    minutes = "-" if row["train_minutes"] is None else f"{row['train_minutes']:.0f}"
    return f"| {row['name']} | {row['from'] or '-'} | `{changed}` | {minutes} | {_rate(row['tuning'])} |"


def cmd_table(_args) -> None:
    data = load()
    print("| Row | From | Changed | Train min | Success, states 0-9 of each task [95% Wilson] |")
    print("|---|---|---|---|---|")
    for row in data["rows"]:
        print(format_row(row))
    for row in data["rows"]:
        for states, o in (row.get("reported") or {}).items():
            print(f"{row['name']} on states {states}: {_rate(o)}")
            if states == "10-49" and row["tuning"]["states"] == "0-9":
                print(f"{row['name']} on all 50 states: {_rate(pooled(row['tuning'], o))} (derived: {POOLED})")


POOLED = "the same policy's two evaluations pooled, k = k(0-9) + k(10-49), n = n(0-9) + n(10-49)"


def pooled(a: dict, b: dict) -> dict:
    """Two evaluations of one policy on disjoint stored states, as one: counts summed, Wilson interval of the sum."""
    from world_modality.analysis.stats import wilson_interval

    k, n = a["k"] + b["k"], a["n"] + b["n"]
    errors = a["errors"] + b["errors"]
    return {"k": k, "n": n, "rate": k / n, "ci95_wilson": list(wilson_interval(k, n)), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("row", help="train (or reuse) and evaluate one row on the tuning states")
    p.add_argument("name")
    p.add_argument("--from", dest="base", default=None, help="the row this one changes one knob of")
    p.add_argument("--dataset", default=None)
    p.add_argument("--train", default="", help="training flags added to (or replacing) the base row's")
    p.add_argument("--eval", default="", help="evaluation flags added to (or replacing) the base row's")
    p.add_argument("--reuse", action="store_true", help="evaluate the base row's trained policy (eval knobs only)")
    p.add_argument("--note", default="")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_row)
    p = sub.add_parser("report", help="run a row's policy on other stored states (e.g. 10-49 or 0-49)")
    p.add_argument("name")
    p.add_argument("--states", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_report)
    sub.add_parser("table").set_defaults(func=cmd_table)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
