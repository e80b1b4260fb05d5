"""A study's stages, each resumable: demonstrations per suite (cached), the world encoder pretrained once per
training dataset when an arm uses it (cached), one training run per suite (or, with --joint, one over all suites),
experiment and seed, closed-loop evaluation of every run (and of each external arm, external_arms.py) on each
standard and LIBERO-PRO suite; wall times kept in
<out>/times.json (accumulated across resumptions). Stages that cannot run are recorded with their reason, not
hidden."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from .records import checkpoint_arm, dataset_provenance, eval_protocol, read_provenance, train_provenance
from .settings import StudySettings, run_config

TIMES_FILE = "times.json"


class Times:
    """Seconds per stage, summed over every resumption; written every few seconds while a stage runs, so a kill
    loses at most those seconds."""

    FLUSH_S = 5.0

    def __init__(self, out: Path):
        self.path = out / TIMES_FILE
        self.seconds: dict[str, float] = self._read() if self.path.exists() else {}

    def _read(self) -> dict[str, float]:
        from ..config import ConfigError

        try:
            seconds = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            seconds, why = None, f"{type(e).__name__}: {e}"
        else:
            why = "a value is not seconds" if isinstance(seconds, dict) else f"it holds a JSON {type(seconds).__name__}"
        if not isinstance(seconds, dict) or not all(isinstance(v, (int, float)) for v in seconds.values()):
            raise ConfigError(
                f"{self.path} is damaged ({why}); expected a JSON object of seconds per stage. Delete it (the stage "
                "times restart from zero; no result is lost) or restore it."
            )
        return seconds

    def _write(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(seconds, 2)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.seconds, indent=2) + "\n")
        tmp.replace(self.path)

    @contextlib.contextmanager
    def stage(self, name: str):
        import threading

        base, t0, stop = self.seconds.get(name, 0.0), time.time(), threading.Event()

        def flush() -> None:
            while not stop.wait(self.FLUSH_S):
                self._write(name, base + time.time() - t0)

        thread = threading.Thread(target=flush, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._write(name, base + time.time() - t0)


def dataset_path(s: StudySettings, suite: str) -> Path:
    if s.dataset is not None:  # a view of --dataset's episodes of the suite's tasks (public_data.py)
        from .public_data import view_path

        return view_path(s, suite)
    tasks = "all" if s.tasks is None else "-".join(map(str, s.tasks))
    return Path(s.data) / f"{suite}-t{tasks}-n{s.demos_per_task}-{s.image_size}px-fresh"


def _demonstration_counts(data: Path) -> dict[int, int]:
    info = json.loads((data / "meta" / "info.json").read_text())
    counts: dict[int, int] = {}
    for ep in info.get("source", {}).get("episodes", []):
        counts[ep["task_id"]] = counts.get(ep["task_id"], 0) + 1
    return counts


def generate_suite(s: StudySettings, suite: str, tasks: list[int]) -> dict:
    """{"dataset", "demos": {task: n}} or {"not_run": reason}. A task the expert solves fewer times than asked keeps
    what it has once its attempts are spent; a suite with no demonstration at all cannot be trained."""
    from ..sim import generate as gen

    data = dataset_path(s, suite)
    try:
        gen.generate(
            suite,
            tasks,
            s.demos_per_task,
            data,
            image_size=s.image_size,
            workers=s.workers,
            seed=0,
            progress=False,
            allow_short=True,
        )
    except gen.TooFewDemonstrations:  # errors (not expert failures) propagate: a rerun retries them
        return {"not_run": "the scripted expert solved no task of this suite", "demos": {t: 0 for t in tasks}}
    counts = _demonstration_counts(data)
    return {"dataset": str(data), "demos": {t: counts.get(t, 0) for t in tasks}, "provenance": dataset_provenance(data)}


def encoder_users(s: StudySettings, suite: str, dataset: str) -> dict:
    """{experiment: run config} of the arms that train on `suite`'s dataset with the pretrained encoder: the windows
    its pretraining must match (world_encoder.pretrain_settings)."""
    from .world_encoder import encoder_of

    return {
        e: run_config(s, e, suite, s.seeds[0], Path(dataset), run_dir(s, suite, e, s.seeds[0]))
        for e in s.experiments
        if encoder_of(s, e) == "pretrained"
    }


def run_dir(s: StudySettings, suite: str, experiment: str, seed: int) -> Path:
    return Path(s.out) / "runs" / suite / f"{experiment.lower()}-seed{seed}"


def train_run(s: StudySettings, suite: str, experiment: str, seed: int, dataset: str) -> Path:
    """Train (or resume, or find finished) one run, in --train-processes processes; its console output goes to the
    run's train.log."""
    from ..train import train
    from .launch import train_in_processes
    from .served import stop_serving

    run = run_dir(s, suite, experiment, seed)
    run.mkdir(parents=True, exist_ok=True)
    cfg = run_config(s, experiment, suite, seed, Path(dataset), run)
    stop_serving()  # the server of a run whose last evaluation did not run would hold memory this training needs
    if s.train_processes > 1:
        final = train_in_processes(cfg, s.train_processes, run / "train.log")
    else:
        with (run / "train.log").open("a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            final = train(cfg, progress=False)
    (run / "trained.json").write_text(json.dumps({"checkpoint": str(final)}) + "\n")
    return Path(final)


def eval_run(
    s: StudySettings,
    checkpoint: Path,
    train_suite: str,
    experiment: str,
    seed: int,
    suite: str,
    tasks: list[int],
    n_episodes: int | None,
    init_states: tuple[int, ...] | None = None,
) -> dict:
    """{"episodes": finished, "errors": errored} of one run on one suite (the same initial states for every run), with
    the protocol it ran under, the arm's description and the code commits of its training and evaluation."""
    from ..evaluate.closed_loop import EvalSettings, evaluate
    from .served import policy_server
    from .videos import kept_videos, videos_to_film

    out = run_dir(s, train_suite, experiment, seed) / "eval" / suite
    log_path = run_dir(s, train_suite, experiment, seed) / "eval.log"
    serve_log = run_dir(s, train_suite, experiment, seed) / "serve.log"
    with (
        policy_server(s, checkpoint, suite, suite == last_evaluation(s, train_suite), serve_log) as server,
        log_path.open("a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        r = evaluate(
            EvalSettings(
                checkpoint=str(checkpoint),
                suite=suite,
                tasks=tuple(tasks),
                n_episodes=n_episodes,
                init_states=init_states,
                workers=s.workers,
                max_steps=s.max_steps,
                video=videos_to_film(s, seed, suite),
                out=str(out),
                policy_server=server,
            ),
            progress=False,
        )
    return {
        "videos": kept_videos(s, train_suite, experiment, seed, suite, tasks, r.finished),
        "episodes": r.finished,
        "errors": r.errors,
        "protocol": eval_protocol(r.settings, suite),
        "arm": checkpoint_arm(checkpoint, r.settings.get("replan_every")),
        "provenance": {"train": train_provenance(checkpoint), "eval": read_provenance(out / "settings.json")},
    }


def last_evaluation(s: StudySettings, train_suite: str) -> str:
    """The suite a run of `train_suite` is evaluated on last (the plan's order): its server stops after it."""
    return [st[4] for st in plan(s) if st[0] == "eval" and st[1] == train_suite][-1]


def plan(s: StudySettings) -> list[tuple]:
    """Every stage in order: ("generate", suite) (("dataset", suite) with --dataset: its tasks taken from it),
    ("merge", "joint") with --joint, ("pretrain", suite) when an arm uses the pretrained world encoder, ("train",
    suite, experiment, seed) and ("eval", suite, experiment, seed, eval_suite), where suite is "joint" for the runs
    over every suite; then each external arm's evaluations (("eval", "external", name, 0, eval_suite)), which need no
    dataset."""
    from .external_arms import stages as external_stages
    from .world_encoder import uses_pretrained

    trained = bool(s.experiments)  # a study of external arms only generates nothing
    stages: list[tuple] = [("dataset" if s.dataset else "generate", suite) for suite in s.suites if trained]
    groups = [("joint", s.suites)] if s.joint else [(suite, (suite,)) for suite in s.suites]
    if s.joint and trained:
        stages.append(("merge", "joint"))
    for train_suite, suites in groups:
        if uses_pretrained(s):
            stages.append(("pretrain", train_suite))
        for e in s.experiments:
            for seed in s.seeds:
                stages.append(("train", train_suite, e, seed))
                stages += [
                    ("eval", train_suite, e, seed, target)
                    for suite in suites
                    for target in (suite, *(f"{suite}_{p}" for p in s.pro))
                ]
    return stages + external_stages(s)


def shard_plan(s: StudySettings, runs: list[tuple]) -> list[tuple]:
    """The study's stages a shard of `runs` needs: their training and evaluations, the datasets they train on
    (every suite's with --joint), which each shard generates (or takes from --dataset) or finds for itself, and the
    pretrained encoder of those datasets when one of its runs uses it (found in --data, or pretrained there)."""
    from .external_arms import EXTERNAL
    from .world_encoder import encoder_of

    keep = set(runs)
    trained = [r for r in runs if r[0] != EXTERNAL]  # an external arm's run needs no dataset
    suites = set(s.suites) if s.joint and trained else {r[0] for r in trained}
    pretrain = {r[0] for r in trained if encoder_of(s, r[1]) == "pretrained"}

    def wanted(st: tuple) -> bool:
        if st[0] in ("train", "eval"):
            return st[1:4] in keep
        if st[0] == "pretrain":
            return st[1] in pretrain
        return (st[0] == "merge" and bool(trained)) or st[1] in suites

    return [st for st in plan(s) if wanted(st)]


def merge_suites(s: StudySettings, suites: dict[str, dict]) -> dict:
    """--joint: one dataset of every suite that has demonstrations, or {"not_run": reason}."""
    from .joint import joint_dataset

    parts = {suite: Path(g["dataset"]) for suite, g in suites.items() if "dataset" in g}
    if not parts:
        return {"not_run": "no suite has a demonstration"}
    name = dataset_path(s, "+".join(parts)).name.replace("-fresh", "-joint")
    data = joint_dataset(parts, Path(s.data) / name, s.image_size)
    return {"dataset": str(data), "provenance": dataset_provenance(data)}


def run_stages(s: StudySettings, tasks_of, stages: list[tuple] | None = None, artifacts=None) -> dict:
    """Run `stages` (default: every stage of the plan); returns {"suites": {suite: generation}, "evals": [...],
    "failed": [...]} for the report. With `artifacts` (artifacts.Artifacts), each dataset and final checkpoint is
    checked against the hash this folder recorded before anything uses it (the pretrained world encoder too); a
    mismatch stops the study."""
    from tqdm.auto import tqdm

    from .external_arms import EXTERNAL, evaluate_arm
    from .world_encoder import encoder_of, pretrain_stage

    out = Path(s.out)
    times = Times(out)
    stages = plan(s) if stages is None else stages
    suites: dict[str, dict] = {}
    checkpoints: dict[tuple, Path | str] = {}
    evals: list[dict] = []
    bar = tqdm(total=len(stages), desc="study", unit="stage")
    for st in stages:
        name = "/".join(map(str, st))
        bar.set_description(f"study {name}")
        kind, suite = st[0], st[1]
        gen = suites.get(suite, {})
        with times.stage(name):
            if kind in ("generate", "dataset", "merge"):
                try:
                    if kind == "generate":
                        suites[suite] = generate_suite(s, suite, tasks_of(suite))
                    elif s.dataset:  # the suite's tasks, or (merged) every suite's, taken from --dataset
                        from .public_data import select

                        parts = s.suites if kind == "merge" else (suite,)
                        suites[suite] = select(s, suite, {b: tasks_of(b) for b in parts})
                    else:
                        suites[suite] = merge_suites(s, suites)
                except Exception as e:  # reported in the table; the study exits non-zero so it is rerun
                    suites[suite] = {"not_run": f"{kind} failed: {type(e).__name__}: {e}", "error": True}
                if artifacts is not None and "dataset" in suites[suite]:
                    suites[suite]["fingerprint"] = artifacts.check_dataset(suite, Path(suites[suite]["dataset"]))
            elif "not_run" in gen:
                pass
            elif kind == "pretrain":
                try:
                    record, folder = pretrain_stage(s, suite, gen["dataset"], encoder_users(s, suite, gen["dataset"]))
                except Exception as e:  # the arms that need it are not trained; a rerun retries it
                    record, folder = {"not_run": f"pretraining failed: {type(e).__name__}: {e}", "error": True}, None
                if artifacts is not None and folder is not None:
                    record["sha256"] = artifacts.check_encoder(suite, folder)
                gen["world_encoder"] = record
            elif kind == "train":
                key = st[1:4]
                encoder = gen.get("world_encoder") or {"not_run": "its world encoder was not pretrained"}
                try:
                    if encoder_of(s, st[2]) == "pretrained" and "not_run" in encoder:
                        checkpoints[key] = f"not trained: {encoder['not_run']}"
                    else:
                        checkpoints[key] = train_run(s, *key, gen["dataset"])
                except Exception as e:
                    checkpoints[key] = f"training failed: {type(e).__name__}: {e}"
                if artifacts is not None and isinstance(checkpoints[key], Path):
                    artifacts.check_checkpoint("/".join(map(str, key)), checkpoints[key])
            else:
                key, target = st[1:4], st[4]
                base = target if target in s.suites else target.rsplit("_", 1)[0]
                ckpt = checkpoints.get(key)
                record = {"train_suite": suite, "experiment": st[2], "seed": st[3], "suite": target}
                external = suite == EXTERNAL  # an external arm is evaluated whatever became of the datasets
                if not external and "not_run" in suites.get(base, {}):  # --joint: a suite without demonstrations
                    record["not_run"] = suites[base]["not_run"]
                elif isinstance(ckpt, Path) or external:
                    standard = target == base
                    n = s.episodes_per_task if standard else s.pro_episodes
                    which = s.init_states if standard else None  # LIBERO-PRO suites keep their first n states
                    try:
                        if external:
                            record.update(evaluate_arm(s, st[2], target, tasks_of(base), n, which, run_dir(s, *key)))
                        else:
                            record.update(eval_run(s, ckpt, suite, st[2], st[3], target, tasks_of(base), n, which))
                    except Exception as e:
                        record.update(not_run=f"evaluation failed: {type(e).__name__}: {e}", error=True)
                else:
                    record["not_run"] = ckpt or "not trained"
                evals.append(record)
        bar.update(1)
    bar.close()
    failed = [f"{k}: {v}" for k, v in checkpoints.items() if not isinstance(v, Path)]
    failed += [f"{k}: {v['not_run']}" for k, v in suites.items() if v.get("error")]
    failed += [
        f"pretrain/{k}: {v['world_encoder']['not_run']}"
        for k, v in suites.items()
        if (v.get("world_encoder") or {}).get("error")
    ]
    failed += [
        f"{'/'.join(map(str, (r['train_suite'], r['experiment'], r['seed'], r['suite'])))}: {r['not_run']}"
        for r in evals
        if r.get("error")
    ]
    return {"suites": suites, "evals": evals, "failed": failed, "times": dict(times.seconds)}
