"""`world-modality study`: the table's layout and counts on a fixture-sized study, resume after SIGKILL, refusals."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from world_modality.cli import main
from world_modality.config import ConfigError

TINY = [
    "--suites",
    "libero_spatial",
    "--tasks",
    "0,1",
    "--experiments",
    "E0,E2",
    "--seeds",
    "0",
    "--demos-per-task",
    "2",
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--world-image-size",
    "32",
    "--episodes-per-task",
    "2",
    "--pro",
    "swap",
    "--pro-episodes",
    "1",
    "--max-steps",
    "20",
    "--pretrain-steps",
    "4",
    "--pretrain-batch-size",
    "4",
]  # the policy's steps, not their number, are under test: short episodes (and a short world-encoder pretraining)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    rc = main(["study", *TINY, "--out", str(root / "whole"), "--data", str(root / "data")])
    return rc, root


@pytest.mark.slow
@pytest.mark.sim
def test_tiny_study_table_layout_and_counts(tiny_study):
    rc, root = tiny_study
    assert rc == 0
    out = root / "whole"
    study = json.loads((out / "study.json").read_text())
    res = study["results"]
    for e in ("E0", "E2"):
        cell = res["standard"][e]["libero_spatial"]
        assert cell["n"] == 4 and 0 <= cell["k"] <= 4  # 2 tasks x 2 initial states, one seed
        assert res["standard"][e]["average"]["n"] == 4
        assert res["pro"][f"swap/{e}"]["libero_spatial"]["n"] == 2  # 2 tasks x 1 initial state
    assert res["paired"]["per_suite"]["libero_spatial"]["n_pairs"] == 4
    assert res["demonstrations"]["libero_spatial"] == {"0": 2, "1": 2}
    assert set(study["seconds"]) >= {
        "generate/libero_spatial",
        "pretrain/libero_spatial",
        "train/libero_spatial/E0/0",
        "eval/libero_spatial/E2/0/libero_spatial_swap",
    }
    lines = (out / "report.md").read_text().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0] == "| Experiment | Spatial | Object | Goal | Long | Average |"
    assert table[2].startswith("| E0 (world: none; ") and table[3].startswith("| E2 (world: tiny V-JEPA-style")
    assert "pretrained by pretrain-world on libero_spatial-" in table[3]  # the study's own encoder, by default
    assert table[2].split(" | ")[2:5] == ["not run"] * 3  # Object, Goal and Long were not asked for
    assert "/4 = " in table[2].split(" | ")[1]
    assert table[4].startswith("| E2 − E0 (paired, these checkpoints) | ") and "pts" in table[4]
    assert any(ln.startswith("| swap/E0 | ") for ln in table)
    assert "## Stage wall times" in lines and any(ln.startswith("| generate/libero_spatial | ") for ln in lines)
    (run,) = study["invocations"]  # when, at which commit and with which command the study ran
    assert run["commit"] and run["utc"] and f"`{run['command']}`" in "\n".join(lines)
    assert shlex.split(run["command"])[-4:] == ["--out", str(out), "--data", str(root / "data")]


@pytest.mark.slow
@pytest.mark.sim
def test_two_shards_one_killed_and_rerun_merge_to_the_unsharded_numbers(tiny_study, tmp_path):
    """Also the study's resume test: shard 1, killed mid-training and run again, gives the unsharded numbers."""
    _, root = tiny_study
    shard = ["study", *TINY, "--data", str(root / "data")]  # the shards share the whole study's datasets
    first = [*shard, "--shard", "1/2", "--out", str(tmp_path / "s1")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "world_modality.cli", *first],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = tmp_path / "s1" / "runs" / "libero_spatial" / "e0-seed0" / "train.log"
    deadline = time.time() + 300
    while not log.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the shard ended before its training started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "s1" / "report_inputs.json").exists()
    assert main(first) == 0  # resumed
    assert main([*shard, "--shard", "2/2", "--out", str(tmp_path / "s2")]) == 0
    assert not (tmp_path / "s2" / "runs" / "libero_spatial" / "e0-seed0").exists()  # E0 is shard 1's alone
    merged = tmp_path / "merged"
    assert main(["study", "merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(merged)]) == 0
    whole = json.loads((root / "whole" / "study.json").read_text())
    study = json.loads((merged / "study.json").read_text())

    # The commits that ran each stage are provenance, not results (as in the resume test above); a kept video's path
    # is relative to the report that links it, so the merged report reaches into the shard folders.
    def results(res: dict) -> dict:
        videos = [{k: v for k, v in video.items() if k != "path"} for video in res["videos"]]
        return {k: v for k, v in res.items() if k not in ("provenance", "videos")} | {"videos": videos}

    assert results(study["results"]) == results(whole["results"])
    assert study["results"]["videos"] and all((merged / v["path"]).is_file() for v in study["results"]["videos"])
    # The killed run of shard 1 is recorded beside the one that finished it: three invocations in all.
    assert [len(sh["runs"]) for sh in study["shards"]] == [1, 1] and len(study["invocations"]) == 3


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["study", "--out", str(tmp_path / "s"), *extra]


@pytest.mark.parametrize(
    "flag,value,named",
    [
        ("--suites", "libero_spatial,libero_spacial", "libero_spacial"),
        ("--experiments", "E0,E9", "E9"),
        ("--pro", "swap,shuffle", "shuffle"),
    ],
)
def test_unknown_names_are_refused_before_anything_runs(tmp_path, flag, value, named):
    from world_modality.cli import build_parser
    from world_modality.study.settings import settings_from_args

    with pytest.raises(ConfigError, match=f"'{named}'.*expected some of"):
        settings_from_args(build_parser().parse_args(_args(tmp_path, flag, value)))
    assert main(_args(tmp_path, flag, value)) != 0
    assert not (tmp_path / "s").exists()


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    from world_modality.cli import build_parser
    from world_modality.study.settings import check_same_study, settings_from_args

    first = settings_from_args(build_parser().parse_args(_args(tmp_path, "--seeds", "0")))
    check_same_study(first)
    check_same_study(first)  # the same study continues
    # The number of workers changes no outcome; it may differ.
    check_same_study(settings_from_args(build_parser().parse_args(_args(tmp_path, "--seeds", "0", "--workers", "1"))))
    other = settings_from_args(build_parser().parse_args(_args(tmp_path, "--seeds", "0,1")))
    with pytest.raises(ConfigError, match=r"other settings \(--seeds: \[0\] there, \[0, 1\] now\)"):
        check_same_study(other)
    (tmp_path / "s" / "study_settings.json").write_text("{}")  # an object, but not of a study
    with pytest.raises(ConfigError, match="study_settings.json is damaged: it lacks the study's suites"):
        check_same_study(first)


def test_init_states_name_the_held_out_states_and_join_the_identity_only_when_given(tmp_path):
    from world_modality.cli import build_parser
    from world_modality.ids import format_ids, parse_ids
    from world_modality.study.settings import command_line, settings_from_args

    def parsed(*extra):
        return settings_from_args(build_parser().parse_args(_args(tmp_path, *extra)))

    s = parsed("--init-states", "10-49")
    assert s.init_states == tuple(range(10, 50)) and tuple(s.identity()["init_states"]) == tuple(range(10, 50))
    assert "--init-states 10-49" in command_line(s)  # the command that continues the study, as typed
    assert "init_states" not in parsed().identity()  # a study begun before the flag existed continues
    assert parse_ids(format_ids([0, 1, 2, 5, 7, 8])) == [0, 1, 2, 5, 7, 8] and format_ids([3]) == "3"
    with pytest.raises(ConfigError, match="not both"):
        parsed("--init-states", "10-49", "--episodes-per-task", "5")
    with pytest.raises(ConfigError, match="ids 0-49"):
        parsed("--init-states", "45-55")


def test_flags_override_the_budget(tmp_path):
    from world_modality.cli import build_parser
    from world_modality.study.settings import BUDGETS, settings_from_args

    # --budget gpu's real models need their weights on disk (test_real_models.py); the tiny ones keep its sizes.
    tiny = ("--backbone", "tiny-qwen2.5-vl", "--world-encoder", "pretrained")
    s = settings_from_args(build_parser().parse_args(_args(tmp_path, "--budget", "gpu", *tiny, "--epochs", "3")))
    assert s.epochs == 3 and s.demos_per_task == BUDGETS["gpu"].demos_per_task
    assert settings_from_args(build_parser().parse_args(_args(tmp_path))).image_size == BUDGETS["cpu"].image_size


def test_the_budgets_learning_rate_schedule_reaches_every_run_and_the_identity(tmp_path):
    from world_modality.study.settings import BUDGETS, command_line, run_config

    cpu = _settings(tmp_path)
    assert cpu.lr_schedule == BUDGETS["cpu"].lr_schedule
    cfg = run_config(cpu, "E0", "libero_spatial", 0, tmp_path / "d", tmp_path / "r")
    assert cfg.train.lr_schedule == cpu.lr_schedule
    flat = _settings(tmp_path, "--lr-schedule", "constant")
    assert run_config(flat, "E0", "libero_spatial", 0, tmp_path / "d", tmp_path / "r").train.lr_schedule == "constant"
    # A constant rate stays out of the identity (studies from before the field continue); cosine is in it.
    assert "lr_schedule" not in flat.identity()
    cosine = _settings(tmp_path, "--lr-schedule", "cosine")
    assert cosine.identity()["lr_schedule"] == "cosine"
    assert "--lr-schedule cosine" in command_line(cosine)
    assert "--lr-schedule" not in command_line(flat)


def _settings(tmp_path: Path, *extra: str):
    from world_modality.cli import build_parser
    from world_modality.study.settings import settings_from_args

    return settings_from_args(build_parser().parse_args(_args(tmp_path, *extra)))


def _eval(experiment: str, seed: int, suite: str, wins: list[bool], errors: int = 0) -> dict:
    """One run's records on one suite: episode i is task i // 2, initial state i % 2."""
    eps = [{"suite": suite, "task_id": i // 2, "init_index": i % 2, "success": w} for i, w in enumerate(wins)]
    errs = [{"suite": suite, "task_id": 9, "init_index": i, "outcome": "error"} for i in range(errors)]
    return {
        "train_suite": suite.split("_swap")[0],
        "experiment": experiment,
        "seed": seed,
        "suite": suite,
        "episodes": eps,
        "errors": errs,
    }


def test_report_tables_from_episode_records(tmp_path):
    from world_modality.study.tables import render, results

    s = _settings(tmp_path, "--suites", "libero_spatial,libero_goal", "--seeds", "0,1", "--pro", "swap")
    evals = [
        _eval("E0", 0, "libero_spatial", [True, False, False, False]),
        _eval("E0", 1, "libero_spatial", [True, True, False, False], errors=1),
        _eval("E2", 0, "libero_spatial", [True, True, True, False]),
        _eval("E2", 1, "libero_spatial", [True, True, True, True]),
        _eval("E0", 0, "libero_spatial_swap", [False, False]),
        _eval("E2", 0, "libero_spatial_swap", [True, False]),
    ]
    evals += [
        {
            "train_suite": "libero_spatial",
            "experiment": e,
            "seed": 1,
            "suite": "libero_spatial_swap",
            "not_run": "training failed: boom",
        }
        for e in ("E0", "E2")
    ]
    run = {
        "evals": evals,
        "failed": [],
        "times": {},
        "suites": {
            "libero_spatial": {"dataset": "d", "demos": {0: 2, 1: 2}},
            "libero_goal": {"not_run": "the scripted expert solved no task of this suite", "demos": {0: 0, 1: 0}},
        },
    }
    res = results(s, run)
    e0, e2 = res["standard"]["E0"], res["standard"]["E2"]
    assert (e0["libero_spatial"]["k"], e0["libero_spatial"]["n"], e0["libero_spatial"]["errors"]) == (3, 8, 1)
    assert (e2["libero_spatial"]["k"], e2["libero_spatial"]["n"]) == (7, 8)  # seeds pooled: sums
    assert e2["average"]["n"] == 8 and e2["average"]["ci"][0] < 7 / 8 < e2["average"]["ci"][1]
    assert "not_run" in e0["libero_goal"]
    pair = res["paired"]["per_suite"]["libero_spatial"]
    assert pair["n_pairs"] == 8 and pair["diff"] == pytest.approx(4 / 8) and pair["n_clusters"] == 4
    assert res["paired"]["per_suite"]["libero_goal"] is None
    assert res["pro"]["swap/E2"]["libero_spatial"]["k"] == 1 and res["pro"]["swap/E0"]["libero_spatial"]["n"] == 2
    assert res["tasks_without_demonstrations"] == {"libero_goal": [0, 1]} and res["errors"] == 1

    table = [ln for ln in render(s, res).splitlines() if ln.startswith("|")]
    assert table[0] == "| Experiment | Spatial | Object | Goal | Long | Average |"
    e0_cells = table[2].split(" | ")
    assert e0_cells[0].startswith("| E0 (world: none; backbone: ") and e0_cells[1].startswith("3/8 = 37.5% [")
    assert "(1 errors)" in e0_cells[1] and "; 4 starts; seed 0: 1/4, seed 1: 2/4" in e0_cells[1]
    assert e0_cells[2] == "not run" and e0_cells[3].startswith("not run (the scripted expert solved no task")
    assert table[3].split(" | ")[1].startswith("7/8 = 87.5% [")
    assert table[4].startswith("| E2 − E0 (paired, these checkpoints) | +50.0 pts [") and "no pairs" in table[4]
    assert table[5].startswith("| E2 − E0 (method level) | +50.0 pts [")
    pro = [ln for ln in table if ln.startswith("| swap/")]
    assert [ln.split(" | ")[0] for ln in pro] == ["| swap/E0", "| swap/E2"]
    assert pro[1].split(" | ")[1].startswith("1/2 = 50.0% [")
    assert pro[1].split(" | ")[1].endswith("; seed 1 missing (training failed: boom)")
    assert pro[0].rstrip(" |").endswith("not run (the scripted expert solved no task of this suite)")


def _suite_dataset(root: Path, suite: str, objects: list[str]) -> Path:
    """A two-episode dataset as generation writes one: frames, environment state, start states, annotations."""
    import numpy as np

    from world_modality.data.env_state import ENV_STATE_KEY, POSE_FIELDS
    from world_modality.data.starts import START_STATES_FILE, start_record, start_states_text
    from world_modality.data.writer import LeRobotWriter
    from world_modality.sim.generate import IMAGE_KEYS

    rng = np.random.default_rng(len(objects))
    names = [f"{o}.{f}" for o in objects for f in POSE_FIELDS]
    source = {"suite": suite, "episodes": []}
    writer = LeRobotWriter(
        root, image_keys=IMAGE_KEYS, image_size=16, extra_features={ENV_STATE_KEY: names}, extra_info={"source": source}
    )
    starts, coc = [], ""
    with writer:
        for task in (0, 1):
            images = {k: rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8) for k in IMAGE_KEYS}
            ep = writer.add_episode(
                images,
                rng.normal(size=(5, 8)),
                rng.normal(size=(5, 7)),
                f"{suite} task {task}",
                extra={ENV_STATE_KEY: np.full((5, len(names)), task + 1.0)},
            )
            source["episodes"].append({"episode_index": ep, "task_id": task, "attempt": 0, "placement_seed": 7})
            starts.append(start_record(ep, suite, task, np.arange(4.0) + task, 7))
            coc += "".join(
                json.dumps({"episode_index": ep, "frame_index": f, "text": f"t{task}"}) + "\n" for f in range(5)
            )
        writer.add_file(START_STATES_FILE, start_states_text(starts))
        writer.add_file("coc.jsonl", coc)
        writer.finalize()
    return root


def test_joint_dataset_holds_every_suite_renumbered(tmp_path):
    import numpy as np

    from world_modality.data.env_state import ENV_STATE_KEY
    from world_modality.data.lerobot import load_dataset
    from world_modality.data.starts import read_training_starts
    from world_modality.study.joint import joint_dataset

    parts = {
        "libero_spatial": _suite_dataset(tmp_path / "a", "libero_spatial", ["bowl"]),
        "libero_object": _suite_dataset(tmp_path / "b", "libero_object", ["milk", "soup"]),
    }
    out = joint_dataset(parts, tmp_path / "joint", image_size=16)
    ds = load_dataset(out, progress=False)
    assert [e.task for e in ds.episodes] == [
        "libero_spatial task 0",
        "libero_spatial task 1",
        "libero_object task 0",
        "libero_object task 1",
    ]
    assert ds.images("observation.images.image").shape == (20, 16, 16, 3)
    env = ds.column(ENV_STATE_KEY)
    assert env.shape == (20, 21)  # 3 objects x 7 pose fields; those absent from a scene are 0
    assert np.all(env[:5].sum(axis=1) == 7.0) and np.all(env[15:].sum(axis=1) == 2 * 7 * 2.0)
    starts = read_training_starts(out)["states"]
    assert [(r["suite"], r["task_id"], r["episode_index"]) for r in starts] == [
        ("libero_spatial", 0, 0),
        ("libero_spatial", 1, 1),
        ("libero_object", 0, 2),
        ("libero_object", 1, 3),
    ]
    coc = [json.loads(line) for line in (out / "coc.jsonl").read_text().splitlines()]
    assert len(coc) == 20 and {r["episode_index"] for r in coc if r["text"] == "t1"} == {1, 3}
    source = json.loads((out / "meta" / "info.json").read_text())["source"]
    assert [(e["suite"], e["task_id"]) for e in source["episodes"]][2] == ("libero_object", 0)
    assert joint_dataset(parts, out, image_size=16) == out  # kept: a rerun does not merge again


def test_joint_plan_trains_once_per_experiment_and_seed(tmp_path):
    from world_modality.study.stages import plan

    s = _settings(tmp_path, "--suites", "libero_spatial,libero_object", "--seeds", "0,1", "--pro", "swap", "--joint")
    stages = plan(s)
    assert stages[:3] == [("generate", "libero_spatial"), ("generate", "libero_object"), ("merge", "joint")]
    assert [st for st in stages if st[0] == "train"] == [("train", "joint", e, k) for e in ("E0", "E2") for k in (0, 1)]
    evals = {st[4] for st in stages if st[0] == "eval"}
    assert evals == {"libero_spatial", "libero_spatial_swap", "libero_object", "libero_object_swap"}
    assert len([st for st in stages if st[0] == "eval"]) == 4 * 4


def test_stages_that_cannot_run_are_reported_and_the_study_exits_non_zero(tmp_path, monkeypatch, capsys):
    from world_modality.study import run, stages

    def generate(s, suite, tasks):
        if suite == "libero_goal":
            return {"not_run": "the scripted expert solved no task of this suite", "demos": {t: 0 for t in tasks}}
        return {"dataset": "d", "demos": {t: 2 for t in tasks}}

    def train(s, suite, experiment, seed, dataset):
        if experiment == "E2":
            raise RuntimeError("boom")
        return tmp_path / "ckpt"

    def evaluate(s, ckpt, train_suite, experiment, seed, suite, tasks, n, init_states=None):
        return {
            "episodes": [{"suite": suite, "task_id": t, "init_index": 0, "success": True} for t in tasks],
            "errors": [],
        }

    monkeypatch.setattr(stages, "generate_suite", generate)
    monkeypatch.setattr(stages, "train_run", train)
    monkeypatch.setattr(stages, "eval_run", evaluate)
    s = _settings(tmp_path, "--suites", "libero_spatial,libero_goal", "--tasks", "0,1", "--world-encoder", "random")
    assert run.run_study(s) == 1
    assert "training failed: RuntimeError: boom" in capsys.readouterr().out
    study = json.loads((tmp_path / "s" / "study.json").read_text())
    assert study["results"]["standard"]["E0"]["libero_spatial"]["n"] == 2
    assert set(study["seconds"]) >= {"generate/libero_goal", "train/libero_spatial/E2/0"}
    table = [ln for ln in (tmp_path / "s" / "report.md").read_text().splitlines() if ln.startswith("|")]
    assert table[2].split(" | ")[3].startswith("not run (the scripted expert solved no task")
    assert table[3].split(" | ")[1] == "not run (training failed: RuntimeError: boom)"
    assert "- libero_goal: no demonstration for tasks 0, 1" in (tmp_path / "s" / "report.md").read_text()


def test_stage_times_accumulate_and_survive_a_kill(tmp_path, monkeypatch):
    from world_modality.study.stages import Times

    monkeypatch.setattr(Times, "FLUSH_S", 0.05)
    times = Times(tmp_path)
    with times.stage("train/x"):
        # Mid-stage, the file comes to hold the time spent so far: a SIGKILL loses at most FLUSH_S. Polled, not slept
        # for a fixed time: on a loaded machine the flushing thread may run late, never not at all.
        deadline, held = time.time() + 30, 0.0
        while held < 0.2 and time.time() < deadline:
            time.sleep(0.05)
            path = tmp_path / "times.json"
            held = json.loads(path.read_text())["train/x"] if path.exists() else 0.0
        assert held >= 0.2
    first = Times(tmp_path).seconds["train/x"]
    with Times(tmp_path).stage("train/x"):  # a resumed study adds to it
        time.sleep(0.1)
    # Stored to the hundredth (and 0.31 + 0.1 > 0.41 in floats), so allow one hundredth of rounding.
    assert Times(tmp_path).seconds["train/x"] >= first + 0.09


def test_the_recorded_command_rebuilds_the_same_study(tmp_path):
    from world_modality.cli import build_parser
    from world_modality.study.settings import command_line, settings_from_args

    flags = ["--suites", "libero_goal,libero_10", "--seeds", "0-2", "--pro", "lan", "--tasks", "1,3", "--joint"]
    flags += ["--epochs", "3", "--episodes-per-task", "7", "--pro-episodes", "2", "--max-steps", "90"]
    s = settings_from_args(build_parser().parse_args(_args(tmp_path, *flags)))
    words = shlex.split(command_line(s))
    assert words[:2] == ["world-modality", "study"]
    again = settings_from_args(build_parser().parse_args(words[1:]))
    assert again == s


def test_init_states_reach_the_standard_suites_evaluations_only(tmp_path, monkeypatch):
    from world_modality.study import run, stages

    asked = {}

    def evaluate(s, ckpt, train_suite, experiment, seed, suite, tasks, n, init_states=None):
        asked[suite] = (n, init_states)
        ks = init_states or range(n or 1)
        eps = [{"suite": suite, "task_id": 0, "init_index": k, "success": True} for k in ks]
        return {"episodes": eps, "errors": []}

    monkeypatch.setattr(stages, "generate_suite", lambda s, suite, tasks: {"dataset": "d", "demos": {0: 2}})
    monkeypatch.setattr(stages, "train_run", lambda *a: tmp_path / "ckpt")
    monkeypatch.setattr(stages, "eval_run", evaluate)
    extra = ("--suites", "libero_spatial", "--experiments", "E0", "--tasks", "0", "--pro", "swap")
    extra += ("--pro-episodes", "1")
    s = _settings(tmp_path, *extra, "--seeds", "0", "--init-states", "10-12")
    assert run.run_study(s) == 0
    assert asked == {"libero_spatial": (None, (10, 11, 12)), "libero_spatial_swap": (1, None)}
