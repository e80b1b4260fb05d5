"""`study --arm NAME=ws://...`: external policy servers as arms of a study. Their flags, refused before anything runs
when wrong; their identity (only when given) and command line; their one run in the plan, the shards and the merge;
their pairing with every seed of a trained arm; and, once, the whole study in the simulator against stand-in
servers, a garbled one's episodes errors, not failures."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from world_modality.cli import build_parser, main
from world_modality.config import ConfigError
from world_modality.inference.test_external import StandIn, _free_port, chunk_of
from world_modality.study.settings import check_same_study, command_line, settings_from_args

ARM = ["--arm", "pi=ws://127.0.0.1:9", "--arm-convention", "pi=openpi-libero", "--arm-set", "pi:chunk_size=10"]
SMALL = ["--suites", "libero_spatial", "--tasks", "0,1", "--seeds", "0", "--episodes-per-task", "2"]
SMALL += ["--world-encoder", "random"]


def _settings(tmp_path: Path, *argv: str):
    return settings_from_args(build_parser().parse_args(["study", "--out", str(tmp_path / "s"), *argv]))


def _starts(path: Path, offset: float = 0.0) -> Path:
    """A start-states file (meta/start_states.jsonl's format) of one start no stored initial state is near."""
    record = {"suite": "libero_spatial", "task_id": 0, "sim_state": [offset + 1e3] * 9}
    path.write_text(json.dumps(record) + "\n")
    return path


def test_arms_become_settings_whose_identity_holds_their_conventions_and_starts_not_their_address(tmp_path):
    spec = tmp_path / "vla.json"
    spec.write_text(json.dumps({"chunk_size": 4, "replan_every": 4, "gripper": "open=+1,close=-1"}))
    starts = _starts(tmp_path / "starts.jsonl")
    argv = [*SMALL, *ARM, "--arm", "vla=ws://gpu-box:8000", "--arm-convention", "vla=openpi-libero"]
    argv += ["--arm-spec", f"vla={spec}", "--arm-set", "vla:replan_every=2", "--arm-train-starts", f"vla={starts}"]
    s = _settings(tmp_path, *argv)
    pi, vla = s.external_arms
    assert (pi.name, pi.address, pi.spec.chunk_size, pi.train_starts_sha256) == ("pi", "ws://127.0.0.1:9", 10, None)
    # The file over the convention, --arm-set over the file.
    assert (vla.spec.chunk_size, vla.spec.replan_every, vla.spec.gripper) == (4, 2, "open=+1,close=-1")
    assert len(vla.train_starts_sha256) == 64 and vla.train_starts == str(starts)

    ident = s.identity()
    assert [a["name"] for a in ident["external_arms"]] == ["pi", "vla"]
    assert ident["external_arms"][1] == {**vla.spec.to_dict(), "train_starts_sha256": vla.train_starts_sha256}
    text = json.dumps(ident)
    assert "127.0.0.1" not in text and "gpu-box" not in text and "timeout" not in text
    assert list(ident)[-1] == "external_arms"  # appended: the keys of a study without arms keep their order

    # The recorded command states the same arms (the convention, then what differs from it) and rebuilds the study.
    words = shlex.split(command_line(s))
    assert "--arm-set" in words and "vla:gripper=open=+1,close=-1" in words and "--arm-timeout" not in words
    assert settings_from_args(build_parser().parse_args(words[1:])) == s

    # Served elsewhere and given longer to answer, it is the same study; another convention is another.
    check_same_study(s)
    moved = [*argv, "--arm-timeout", "30"]
    moved[moved.index("pi=ws://127.0.0.1:9")] = "pi=ws://elsewhere:9000"
    again = _settings(tmp_path, *moved)
    check_same_study(again)
    assert "--arm-timeout 30.0" in command_line(again) and "pi=ws://elsewhere:9000" in command_line(again)
    with pytest.raises(
        ConfigError, match=r"other settings \(--arm and its conventions: .*'chunk_size': 10.*'chunk_size': 12"
    ):
        check_same_study(_settings(tmp_path, *argv, "--arm-set", "pi:chunk_size=12"))
    # A changed training-starts file is another study too: its starts are what the held-out check read.
    _starts(starts, offset=1.0)
    with pytest.raises(ConfigError, match="train_starts_sha256"):
        check_same_study(_settings(tmp_path, *argv))


def test_a_study_without_arms_keeps_its_identity_and_command_line(tmp_path):
    s = _settings(tmp_path, *SMALL)
    assert s.external_arms == () and "external_arms" not in s.identity() and "arm_timeout_s" not in s.identity()
    assert "--arm" not in command_line(s)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*ARM, "--arm-set", "vla:chunk_size=4"], r"--arm-set 'vla:chunk_size=4': no arm is named 'vla'; expected"),
        ([*ARM, "--arm-convention", "vla=openpi-libero"], "--arm-convention 'vla=openpi-libero': no arm is named"),
        ([*ARM, "--arm-spec", "vla=f.json"], "--arm-spec 'vla=f.json': no arm is named 'vla'"),
        ([*ARM, "--arm-train-starts", "vla=d"], "--arm-train-starts 'vla=d': no arm is named 'vla'"),
        ([*ARM, "--arm-set", "chunk_size=4"], r"--arm-set 'chunk_size=4': expected NAME:FIELD=VALUE"),
        ([*ARM, "--arm-set", "pi:chunk=4"], r"--arm-set 'pi:chunk=4': an arm field is FIELD=VALUE with FIELD one"),
        ([*ARM, "--arm-set", "pi:chunk_size=ten"], "chunk_size must be a whole number"),
        (["--arm", "E0=ws://h:1", "--arm-convention", "E0=openpi-libero"], "'E0' names the experiment preset 'E0'"),
        (["--arm", "e2-state=ws://h:1"], "'e2-state' names the experiment preset 'E2-State'"),
        ([*ARM, "--arm", "PI=ws://h:2"], "--arm names arm 'PI' twice \\(also as 'pi'\\)"),
        (ARM[:4], "arm 'pi': it does not state chunk_size .* --arm-set pi:FIELD=VALUE"),
        (["--arm", "pi=ws://h:1", "--arm-set", "pi:chunk_size=8"], "does not state image_orientation"),
        ([*ARM, "--arm-convention", "pi=openpi"], "is given twice for arm 'pi'"),
        (["--arm", "pi=ws://h:1", "--arm-convention", "pi=openpi"], "unknown arm convention 'openpi'"),
        ([*ARM, "--arm-set", "pi:replan_every=11"], "replan_every is 11 with chunk_size 10"),
        (["--arm", "pi=gpu:8000"], "--arm 'pi=gpu:8000': an arm's server address is ws://HOST:PORT"),
        (["--arm", "a/b=ws://h:1"], "an arm's name must be"),
        (["--arm-set", "pi:chunk_size=4"], "--arm-set describes an external arm; name it with --arm"),
        (["--arm-timeout", "5"], "--arm-timeout describes an external arm"),
        ([*ARM, "--arm-timeout", "0"], "--arm-timeout must be positive seconds, got 0.0"),
        (["--experiments", ""], "--experiments is empty; .* or --arm NAME=ws://HOST:PORT"),
        ([*ARM, "--arm-train-starts", "pi=/no/such/file"], r"--arm-train-starts pi=/no/such/file .*does not exist"),
    ],
    ids=[
        "set-unknown-arm",
        "convention-unknown-arm",
        "spec-unknown-arm",
        "starts-unknown-arm",
        "set-without-name",
        "set-unknown-field",
        "set-bad-number",
        "preset-name",
        "preset-name-any-case",
        "twice",
        "no-chunk",
        "no-convention",
        "convention-twice",
        "unknown-convention",
        "replan-above-chunk",
        "address",
        "name",
        "set-without-arm",
        "timeout-without-arm",
        "timeout",
        "no-arm-at-all",
        "starts-missing",
    ],
)
def test_bad_arm_flags_are_refused_naming_the_value(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        _settings(tmp_path, *SMALL, *argv)
    assert not (tmp_path / "s").exists()


def test_unreadable_training_starts_are_refused_before_anything_runs(tmp_path):
    bad = tmp_path / "starts.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(ConfigError, match=r"--arm-train-starts pi=.*starts.jsonl .*line 1 is not a start-state record"):
        _settings(tmp_path, *SMALL, *ARM, "--arm-train-starts", f"pi={bad}")


def test_an_unreachable_server_is_refused_before_anything_is_written(tmp_path, capsys):
    address = f"ws://127.0.0.1:{_free_port()}"
    argv = ["study", *SMALL, "--experiments", "", "--arm", f"pi={address}", *ARM[2:], "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    assert f"--arm pi={address}: policy server" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_external_arms_are_contrasted_with_e0_or_the_first_arm():
    from world_modality.study.contrasts import pairs_of

    assert pairs_of(("E0", "E2", "pi")) == [
        ("E0", "E2", "primary", "does the world modality help"),
        ("E0", "pi", "secondary", "against E0"),
    ]
    assert [p[:3] for p in pairs_of(("E2", "E2-Present", "pi", "vla"))] == [
        ("E2-Present", "E2", "primary"),
        ("E2", "pi", "secondary"),  # no E0: against the first arm
        ("E2", "vla", "secondary"),
    ]
    assert [p[:3] for p in pairs_of(("E0", "pi"))] == [("E0", "pi", "primary")]
    assert [p[:3] for p in pairs_of(("pi", "vla"))] == [("pi", "vla", "primary")]  # a study of external arms only
    assert pairs_of(("pi",)) == []


def _records(arm: str, seed: int, wins: list[bool], train_suite: str = "libero_spatial") -> dict:
    """One run's records on libero_spatial: episode i is task i // 2, initial state i % 2."""
    eps = [
        {"suite": "libero_spatial", "task_id": i // 2, "init_index": i % 2, "success": w} for i, w in enumerate(wins)
    ]
    protocol = {"suite": "libero_spatial", "step_limit": 20, "seed": 7}
    run = {"train_suite": train_suite, "experiment": arm, "seed": seed, "suite": "libero_spatial"}
    return {**run, "episodes": eps, "errors": [], "protocol": protocol}


def test_an_external_arm_is_one_run_paired_with_every_seed_of_the_other(tmp_path):
    from world_modality.study.tables import render, results

    s = _settings(tmp_path, *SMALL, "--experiments", "E0", "--seeds", "0-2", *ARM)
    evals = [_records("E0", seed, [seed == 0, False, True, seed < 2]) for seed in (0, 1, 2)]
    evals.append(_records("pi", 0, [True, True, True, False], train_suite="external"))
    res = results(s, {"evals": evals, "failed": [], "times": {}, "suites": {"libero_spatial": {"demos": {0: 2}}}})
    cell = res["standard"]["pi"]["libero_spatial"]
    assert (cell["k"], cell["n"], cell["starts"], cell["missing"]) == (3, 4, 4, [])  # no seed 1, 2 said missing
    (c,) = res["contrasts"]
    assert (c["a"], c["b"], c["role"]) == ("E0", "pi", "primary")
    p = c["average"]
    # Its outcome at each start meets each of E0's three seeds: 12 pairs, 4 starts; E0 wins 6/12, pi 9/12.
    assert (p["n_pairs"], p["n_clusters"]) == (12, 4) and p["diff"] == pytest.approx(9 / 12 - 6 / 12)
    ml = p["method_level"]
    assert (ml["seeds_a"], ml["seeds_b"]) == (3, 1) and ml["p"] is None  # one run, not three seeds
    arm = res["arms"]["pi"]
    assert arm["external"] and arm["conventions"]["chunk_size"] == 10 and arm["chunk_size"] == 10
    report = render(s, res)
    assert "| pi (external arm) | 3/4 = 75.0% [" in report
    assert "| pi | its own (external policy server) | its own (external policy server) | 10 | 5 | external |" in report
    assert "- arm pi: cameras rotated_180 rendered at 256 px, sent at 224 px" in report
    assert "held-out starts not checked (no --arm-train-starts pi=PATH given)" in report


@pytest.fixture
def standin():
    server = StandIn(lambda req, i: {"actions": chunk_of(10)})
    yield server
    server.stop()


def test_an_external_arm_is_a_run_of_the_plan_the_shards_and_the_merge(tmp_path, monkeypatch, standin):
    from world_modality.study import external_arms, stages
    from world_modality.study.shards import shard_runs, study_runs
    from world_modality.study.stages import plan, shard_plan

    arm = ["--arm", f"pi={standin.address}", *ARM[2:], "--pro", "swap", "--pro-episodes", "1"]
    only = _settings(tmp_path, *SMALL, "--experiments", "", *arm)
    assert only.experiments == () and plan(only) == [
        ("eval", "external", "pi", 0, "libero_spatial"),
        ("eval", "external", "pi", 0, "libero_spatial_swap"),
    ]
    s = _settings(tmp_path, *SMALL, "--experiments", "E0", "--seeds", "0,1", *arm)
    assert study_runs(s) == [("external", "pi", 0), ("libero_spatial", "E0", 0), ("libero_spatial", "E0", 1)]
    shard = shard_runs(s, (1, 2))
    assert shard_plan(s, shard)[0] == ("generate", "libero_spatial")  # E0 seed 1 trains on it; the arm needs none
    assert shard_plan(s, [("external", "pi", 0)]) == [st for st in plan(s) if st[1] == "external"]

    asked = []

    def episodes(suite, tasks, n, wins):
        eps = [{"suite": suite, "task_id": t, "init_index": k, "success": wins(t, k)} for t in tasks for k in range(n)]
        return {"episodes": eps, "errors": [], "protocol": {"suite": suite, "step_limit": 20, "seed": 7}}

    def evaluate_arm(s, name, suite, tasks, n, init_states, folder):
        asked.append((name, suite, tuple(tasks), n, folder.relative_to(s.out).as_posix()))
        return episodes(suite, tasks, n, lambda t, k: k == 0)

    def eval_run(s, ckpt, train_suite, experiment, seed, suite, tasks, n, init_states=None):
        return episodes(suite, tasks, n, lambda t, k: (t + k + seed) % 2 == 0)

    monkeypatch.setattr(external_arms, "evaluate_arm", evaluate_arm)
    monkeypatch.setattr(stages, "eval_run", eval_run)
    monkeypatch.setattr(stages, "generate_suite", lambda s, suite, tasks: {"dataset": "d", "demos": {0: 2, 1: 2}})
    monkeypatch.setattr(stages, "train_run", lambda s, suite, e, seed, dataset: tmp_path / "ckpt")
    common = ["study", *SMALL, "--experiments", "E0", "--seeds", "0,1", *arm, "--data", str(tmp_path / "data")]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    assert [a for a in asked if a[0] == "pi"] == [
        ("pi", "libero_spatial", (0, 1), 2, "runs/external/pi-seed0"),
        ("pi", "libero_spatial_swap", (0, 1), 1, "runs/external/pi-seed0"),
    ]
    assert main([*common, "--shard", "1/2", "--out", str(tmp_path / "s1")]) == 0
    assert main([*common, "--shard", "2/2", "--out", str(tmp_path / "s2")]) == 0
    held = json.loads((tmp_path / "s1" / "shard.json").read_text())["runs"]
    assert held == [["external", "pi", 0], ["libero_spatial", "E0", 1]]
    merged = tmp_path / "merged"
    assert main(["study", "merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(merged)]) == 0

    def results(folder):
        return {
            k: v for k, v in json.loads((folder / "study.json").read_text())["results"].items() if k != "provenance"
        }

    whole = results(tmp_path / "whole")
    assert results(merged) == whole
    assert whole["standard"]["pi"]["libero_spatial"]["n"] == 4 and whole["pro"]["swap/pi"]["libero_spatial"]["n"] == 2
    assert [(c["a"], c["b"]) for c in whole["contrasts"]] == [("E0", "pi")]
    assert "- arm pi: " in (merged / "report.md").read_text()  # the conventions, read back from the settings alone

    # A study of external arms only: nothing generated or trained, and its command says so.
    asked.clear()
    alone = tmp_path / "alone"
    argv = ["study", *SMALL, "--experiments", "", *arm, "--out", str(alone)]
    assert main(argv) == 0
    assert [a[1] for a in asked] == ["libero_spatial", "libero_spatial_swap"] and not (alone / "data").exists()
    assert "| pi (external arm) | 2/4 = 50.0% [" in (alone / "report.md").read_text()
    (logged,) = [json.loads(line) for line in (alone / "invocations.jsonl").read_text().splitlines()]
    words = shlex.split(logged["command"])
    assert words[words.index("--experiments") + 1] == ""
    assert settings_from_args(build_parser().parse_args(words[1:])) == settings_from_args(
        build_parser().parse_args(argv)
    )


SIM = ["--suites", "libero_spatial", "--tasks", "0", "--seeds", "0", "--episodes-per-task", "1", "--max-steps", "10"]
SIM += ["--demos-per-task", "1", "--epochs", "1", "--image-size", "32", "--world-image-size", "32", "--workers", "1"]
# Small renders and LIBERO's cheaper camera settings: the protocol and the bookkeeping are under test, not the policy.
SIM_ARM = ["--arm-set", "{}:render_size=64", "--arm-set", "{}:image_size=64", "--arm-set", "{}:render_profile=fast"]


@pytest.mark.slow
@pytest.mark.sim
def test_a_study_evaluates_external_arms_beside_a_trained_one_and_a_garbled_ones_episodes_are_errors(tmp_path, capsys):
    import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)

    still = StandIn(lambda req, i: {"actions": chunk_of(8)})  # the gripper open, never moving: failures
    garbled = StandIn(lambda req, i: {"actions": chunk_of(3)})  # chunks of another length than stated: errors
    try:
        argv = ["study", *SIM, "--experiments", "E0", "--out", str(tmp_path / "s"), "--data", str(tmp_path / "d")]
        for name, server in (("still", still), ("garbled", garbled)):
            argv += ["--arm", f"{name}={server.address}", "--arm-convention", f"{name}=openpi-libero"]
            argv += ["--arm-set", f"{name}:chunk_size=8", *(a.format(name) for a in SIM_ARM)]
        assert main(argv) == 1
        out = capsys.readouterr().out
        assert "[study] ERROR: 1 closed-loop episode(s) ended in an error" in out
        assert "eval/external/garbled/0/libero_spatial" not in out  # an episode's error, not a failed stage

        study = json.loads((tmp_path / "s" / "study.json").read_text())
        res = study["results"]
        assert res["standard"]["still"]["libero_spatial"]["n"] == 1
        assert res["standard"]["E0"]["libero_spatial"]["n"] == 1
        assert res["standard"]["garbled"]["libero_spatial"]["not_run"] == "all 1 episodes ended in errors"
        (garbled_eval,) = [r for r in study_evals(tmp_path / "s") if r["experiment"] == "garbled"]
        (error,) = garbled_eval["errors"]
        assert error["outcome"] == "error" and error["success"] is None and error["error"].startswith("BadReply")
        assert study["settings"]["external_arms"][0]["chunk_size"] == 8

        report = (tmp_path / "s" / "report.md").read_text()
        assert "| still (external arm) | 0/1 = 0.0% [" in report
        assert "- arm still: cameras rotated_180 rendered at 64 px (fast render settings)" in report
        assert "held-out starts not checked (no --arm-train-starts still=PATH given)" in report
        (row,) = [ln for ln in report.splitlines() if ln.startswith("| still − E0 |")]
        assert "(1 pairs, 1 starts)" in row
        assert len(still.requests) == 10 // 5  # one request per replan_every control steps

        # A rerun retries the errors and only them: E0 and the still arm's episode are done.
        assert main(argv) == 1
        assert len(still.requests) == 2 and len(garbled.requests) == 4  # two tries per run of the command
    finally:
        still.stop()
        garbled.stop()


def study_evals(out: Path) -> list[dict]:
    return json.loads((out / "report_inputs.json").read_text())["evals"]
