"""A bad setting of the machine the command runs on (a renderer MUJOCO_GL does not name, a port already taken) is
bad input too: one line `prog: error: message` on stderr and exit status 2, in a fresh process, never a traceback
(docs/BAD_INPUTS.md). Sockets are bound on 127.0.0.1 only."""

import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from world_modality.config import ConfigError
from world_modality.errors import RunFailed, run_reporting_errors


def one_line_error(argv, prog, env=None, timeout=120) -> str:
    """Run the CLI in a fresh process; its one-line error, after checking exit status 2 and no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "world_modality.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (proc.returncode, err)
    head, _, message = err.partition(": error: ")
    assert head == prog, err
    return message


def test_a_renderer_mujoco_gl_does_not_name_stops_generation_before_any_worker(tmp_path):
    out = tmp_path / "ds"
    argv = ["generate", "--suite", "libero_spatial", "--tasks", "0", "--episodes-per-task", "1", "--out", str(out)]
    message = one_line_error(argv + ["--workers", "1"], "world-modality generate", env={"MUJOCO_GL": "banana"})
    assert message == (
        "MUJOCO_GL='banana' is not a renderer the simulator can use; expected 'egl' or 'osmesa' (off-screen "
        "rendering), or MUJOCO_GL unset for the automatic choice."
    )
    assert not out.exists() and not (tmp_path / "ds.partial").exists()  # nothing started


def test_every_simulator_command_checks_the_renderer_first(tmp_path, monkeypatch, capsys):
    from world_modality.cli import SIMULATOR_COMMANDS, main

    assert set(SIMULATOR_COMMANDS) == {"generate", "eval", "study", "demo"}
    monkeypatch.setenv("MUJOCO_GL", "glfw ")
    # The checkpoint does not exist: the renderer is named first, before anything is read.
    assert main(["eval", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "MUJOCO_GL='glfw ' is not a renderer the simulator can use" in capsys.readouterr().err
    monkeypatch.setenv("MUJOCO_GL", " EGL")  # spacing and case as MuJoCo reads it
    from world_modality.sim.gl import check_gl_environment

    assert check_gl_environment() == "egl"


def test_serve_on_a_port_in_use_is_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        argv = ["serve", "--checkpoint", str(tmp_path / "missing"), "--port", str(port), "--device", "cpu"]
        message = one_line_error(argv, "world-modality serve")
    assert message.startswith(f"--port {port} on 127.0.0.1 is already in use (")
    assert message.endswith("stop what listens there, or choose another --port (0: any free port).")


def test_serve_on_an_address_that_is_not_this_machines_is_one_line(tmp_path):
    # 192.0.2.1 is reserved for documentation (TEST-NET-1): no machine has it, and binding sends nothing.
    argv = ["serve", "--checkpoint", str(tmp_path / "missing"), "--host", "192.0.2.1", "--port", "0"]
    message = one_line_error(argv + ["--device", "cpu"], "world-modality serve")
    assert message.startswith("cannot listen on 192.0.2.1:0 (") and "expected --host to be an address" in message


def test_a_port_taken_between_the_check_and_the_bind_is_the_same_error():
    """The port is checked before the checkpoint loads; taken meanwhile, the server's own bind names it too."""
    from world_modality.serve.server import PolicyServer

    policy = SimpleNamespace(max_message_bytes=1 << 20, runner=SimpleNamespace(checkpoint="ck"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = PolicyServer(policy, port=taken.getsockname()[1])
        with pytest.raises(ConfigError, match=r"--port \d+ on 127.0.0.1 is already in use"):
            server.start(timeout=10)
        server.stop()


def test_a_run_that_failed_is_one_line_and_exit_1(capsys):
    def fails():
        raise RunFailed("1 generation attempt(s) raised an error (not an expert failure): ...; run it again.")

    assert run_reporting_errors("world-modality generate", fails) == 1
    err = capsys.readouterr().err
    assert err == (
        "world-modality generate: error: 1 generation attempt(s) raised an error (not an expert failure): ...; "
        "run it again.\n"
    )
