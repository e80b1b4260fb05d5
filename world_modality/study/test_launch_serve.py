"""`world-modality study --train-processes N --serve`: the torchrun command, refused process counts, the identity,
a failed launch reported with its error, a run's policy server kept across its evaluations and stopped after the
last or when one raises, and one tiny study trained in two processes and evaluated through a server."""

from __future__ import annotations

import json
import re
import shlex
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from world_modality.cli import build_parser, main
from world_modality.config import ConfigError
from world_modality.study import launch, served
from world_modality.study.settings import check_same_study, command_line, run_config, settings_from_args


def _settings(tmp_path: Path, *extra: str):
    return settings_from_args(build_parser().parse_args(["study", "--out", str(tmp_path / "s"), *extra]))


def test_the_torchrun_command_starts_n_copies_of_the_launch_entry_on_a_free_port():
    cmd = launch.torchrun_command(Path("/r/launch_config.json"), 3)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd  # a free rendezvous port: two studies on a machine never share a process group
    assert cmd[cmd.index("--nproc_per_node") + 1] == "3"
    assert cmd[-3:] == ["-m", "world_modality.study.launch", "/r/launch_config.json"]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_train_process_count_below_one_is_refused_naming_it(tmp_path, value):
    with pytest.raises(ConfigError, match=rf"--train-processes must be >= 1 .*got {value}\."):
        _settings(tmp_path, "--train-processes", value)
    assert main(["study", "--out", str(tmp_path / "s"), "--train-processes", value]) == 2
    assert not (tmp_path / "s").exists()


def test_more_train_processes_than_gpus_are_refused(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"--train-processes 2: this machine has 1 CUDA device\(s\).*at most 1"):
        _settings(tmp_path, "--train-processes", "2")


def test_train_processes_join_the_identity_only_when_not_one_and_serve_never(tmp_path):
    plain = _settings(tmp_path)
    assert "train_processes" not in plain.identity() and "serve" not in plain.identity()
    assert "--train-processes" not in command_line(plain) and "--serve" not in command_line(plain)
    two = _settings(tmp_path, "--train-processes", "2", "--serve")
    assert two.identity() == {**plain.identity(), "train_processes": 2}
    words = shlex.split(command_line(two))
    assert "--serve" in words and words[words.index("--train-processes") + 1] == "2"
    assert settings_from_args(build_parser().parse_args(words[1:])) == two  # the recorded command continues it
    check_same_study(plain)
    check_same_study(_settings(tmp_path, "--serve"))  # serving changes no setting of the study
    with pytest.raises(ConfigError, match=r"--train-processes: not given there, 2 now"):
        check_same_study(two)


def test_train_threads_reach_each_run_never_the_identity_and_a_run_resumes_under_another_count(tmp_path):
    from world_modality.train_output import check_same_experiment

    plain, two = _settings(tmp_path), _settings(tmp_path, "--train-threads", "2")
    assert two.identity() == plain.identity()
    cfgs = [run_config(s, "E0", "libero_spatial", 0, tmp_path / "data", tmp_path / "run") for s in (plain, two)]
    assert [c.train.num_threads for c in cfgs] == [0, 2]
    check_same_experiment(cfgs[0], cfgs[1], tmp_path / "run")  # rounding only: resumable, not refused
    words = shlex.split(command_line(two))
    assert words[words.index("--train-threads") + 1] == "2" and "--train-threads" not in command_line(plain)
    assert settings_from_args(build_parser().parse_args(words[1:])) == two  # the recorded command continues it
    check_same_study(plain)
    check_same_study(two)
    with pytest.raises(ConfigError, match=r"--train-threads must be >= 0 .*got -1\."):
        _settings(tmp_path, "--train-threads", "-1")


def test_the_processes_train_the_runs_config_and_a_failure_names_their_error(tmp_path, monkeypatch):
    s = _settings(tmp_path, "--train-processes", "2", "--world-encoder", "random")
    cfg = run_config(s, "E2", "libero_spatial", 0, tmp_path / "data", tmp_path / "run")
    failing = "import sys; print('started'); sys.exit('world_modality.study.launch: error: --dataset is no dataset')"
    monkeypatch.setattr(launch, "torchrun_command", lambda config, n: [sys.executable, "-c", failing])
    log = tmp_path / "run" / "train.log"
    with pytest.raises(launch.TrainingProcessesFailed, match=r"status 1: world_modality.study.launch: error: --dat"):
        launch.train_in_processes(cfg, 2, log)
    from world_modality.config import ExperimentConfig

    assert ExperimentConfig.from_json(tmp_path / "run" / launch.CONFIG_FILE) == cfg  # what every process trains
    assert "[study] training in 2 processes" in log.read_text() and "started" in log.read_text()


# A stand-in for `world-modality serve`: prints the server's "listening" line (and a batch line the log leaves out),
# answers /healthz and /stats over HTTP, and serves until stopped.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"OK\\n" if self.path == "/healthz" else json.dumps(
                {"requests": 3, "batches": 2, "batch_sizes": {"1": 1, "2": 1}}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a):
            pass
    s = http.server.HTTPServer(("127.0.0.1", 0), H)
    print("t world_modality.serve.server: batch of 2: infer 1.0 ms, request latency 1.0 1.0 ms")
    print(f"t world_modality.serve.server: serving {sys.argv[1]} on ws://127.0.0.1:{s.server_port}", flush=True)
    s.serve_forever()
    """
)


@pytest.fixture()
def fake_server(monkeypatch):
    """The servers started, each a Popen."""
    from world_modality.study import children

    started, real = [], children.start

    def start(cmd, **popen):
        started.append(real(cmd, **popen))
        return started[-1]

    monkeypatch.setattr(served, "serve_command", lambda ckpt: [sys.executable, "-c", FAKE_SERVER, str(ckpt)])
    monkeypatch.setattr(children, "start", start)
    yield started
    served.stop_serving()


def test_a_runs_server_serves_each_of_its_evaluations_and_stops_after_the_last(tmp_path, fake_server):
    s = _settings(tmp_path, "--serve", "--suites", "libero_spatial", "--pro", "swap")
    log = tmp_path / "serve.log"
    addresses = []
    for suite in ("libero_spatial", "libero_spatial_swap"):
        with served.policy_server(s, tmp_path / "ckpt", suite, suite == "libero_spatial_swap", log) as address:
            addresses.append(address)
            assert fake_server[0].poll() is None
    assert len(fake_server) == 1 and addresses[0] == addresses[1] and re.fullmatch(r"127\.0\.0\.1:\d+", addresses[0])
    assert fake_server[0].poll() is not None  # stopped after the run's last evaluation
    text = log.read_text()
    assert not any(line.startswith("t world_modality.serve.server: batch") for line in text.splitlines())
    assert "libero_spatial: 0 requests served" in text
    assert '"requests": 3' in text and "stopped (exit status" in text
    with served.policy_server(_settings(tmp_path), tmp_path / "ckpt", "x", True, log) as address:
        assert address is None  # without --serve each worker loads the policy


def test_the_server_is_stopped_when_an_evaluation_raises(tmp_path, fake_server):
    s = _settings(tmp_path, "--serve", "--suites", "libero_spatial", "--pro", "swap")
    with pytest.raises(KeyboardInterrupt):
        with served.policy_server(s, tmp_path / "ckpt", "libero_spatial", False, tmp_path / "serve.log"):
            raise KeyboardInterrupt  # not the run's last evaluation: only the error stops the server
    assert fake_server[0].poll() is not None and served._current is None


def test_a_server_that_exits_before_listening_is_an_error_naming_its_last_words(tmp_path, monkeypatch):
    dying = "print('cannot load the checkpoint'); raise SystemExit(3)"
    monkeypatch.setattr(served, "serve_command", lambda ckpt: [sys.executable, "-c", dying])
    s = _settings(tmp_path, "--serve")
    with pytest.raises(served.ServerFailed, match=r"exited with status 3; its last words: cannot load the checkpoint"):
        with served.policy_server(s, tmp_path / "ckpt", "libero_spatial", False, tmp_path / "serve.log"):
            pytest.fail("an evaluation ran without its server")
    assert served._current is None


@pytest.mark.slow
@pytest.mark.sim
def test_a_tiny_study_trains_in_two_processes_and_evaluates_through_a_server(tmp_path):
    import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)

    out = tmp_path / "study"
    flags = ["--suites", "libero_spatial", "--experiments", "E0", "--tasks", "0", "--seeds", "0"]
    flags += ["--demos-per-task", "1", "--epochs", "1", "--image-size", "32", "--world-image-size", "32"]
    flags += ["--episodes-per-task", "1", "--max-steps", "20", "--train-processes", "2", "--serve"]
    assert main(["study", *flags, "--out", str(out), "--data", str(tmp_path / "data")]) == 0
    run = out / "runs" / "libero_spatial" / "e0-seed0"
    assert "2 process(es)" in (run / "train.log").read_text()  # what train.py prints once Accelerate started
    assert json.loads((out / "study_settings.json").read_text())["train_processes"] == 2
    serve_log = (run / "serve.log").read_text()
    assert int(re.search(r"libero_spatial: (\d+) requests served", serve_log)[1]) > 0
    evaluation = json.loads((run / "eval" / "libero_spatial" / "settings.json").read_text())
    assert re.fullmatch(r"127\.0\.0\.1:\d+", evaluation["policy_server"])
    inputs = json.loads((out / "report_inputs.json").read_text())
    assert [len(e["episodes"]) for e in inputs["evals"]] == [1] and not inputs["evals"][0]["errors"]
    pids = [int(p) for p in re.findall(r"server pid (\d+) stopped", serve_log)]
    assert len(pids) == 1 and not psutil.pid_exists(pids[0])  # no server outlives the study
