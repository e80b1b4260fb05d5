"""A study run evaluated through one batched `world-modality serve` of its checkpoint (`--serve`): the server is
started for the run on a free loopback port, every evaluation of the run (each suite and LIBERO-PRO perturbation)
sends it the simulators' requests, and it is stopped after the run's last evaluation, when an evaluation raises or
is interrupted, before the next run trains, and when the study exits. Its console is the run's serve.log."""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

READY_TIMEOUT_S = 900.0  # a real backbone's checkpoint loads for minutes; a server that exits is seen at once
LISTENING = re.compile(r"serving .* on ws://(\S+):(\d+)\s*$")
# One line per batch: hundreds of thousands in a full study, and the run folder is kept in a repository. The
# counts they carry are written at each evaluation's end instead (`Server.note_evaluation`).
BATCH_LINE = re.compile(r"world_modality\.serve\.server: batch of \d+: infer")
# Straight to the loopback server: an http_proxy of the environment would otherwise be asked for it.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serve_command(checkpoint: Path) -> list[str]:
    """`world-modality serve` of this interpreter, on the loopback interface (the simulators are on this machine)
    and a free port, batching as its defaults do."""
    cmd = [sys.executable, "-m", "world_modality.cli", "serve", "--checkpoint", str(checkpoint)]
    return [*cmd, "--host", "127.0.0.1", "--port", "0"]


class ServerFailed(RuntimeError):
    """The run's policy server did not start: the evaluation is an error (retried by a rerun), not a failure."""


class Server:
    """One `world-modality serve` process of `checkpoint`; `address` is its HOST:PORT once it listens."""

    def __init__(self, checkpoint: Path, log: Path):
        from .children import start

        self.checkpoint, self.log = checkpoint, log
        self.address: str | None = None
        self._lock = threading.Lock()
        self._file = log.open("a", buffering=1)
        self._listening = threading.Event()
        self._last = collections.deque(maxlen=3)  # the console's last lines, for an error
        cmd = serve_command(checkpoint)
        self.note(f"[study] serving {checkpoint}: {' '.join(cmd)}")
        self.proc = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.note(f"[study] server pid {self.proc.pid}")
        self._reader = threading.Thread(target=self._read, name="serve-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if BATCH_LINE.search(line):
                continue
            found = LISTENING.search(line)
            if found and self.address is None:
                self.address = f"{found[1]}:{found[2]}"
                self._listening.set()
            self._last.append(line.strip())
            self.note(line.rstrip("\n"))
        self._listening.set()  # the server's console closed: it has exited

    def note(self, line: str) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """HOST:PORT once the server listens and answers GET /healthz; ServerFailed if it exits first or takes
        longer than `timeout_s`."""
        if not self._listening.wait(timeout_s) or self.address is None:
            try:  # its console closed as it exited: wait for the status
                status = self.proc.wait(30) if self._listening.is_set() else None
            except subprocess.TimeoutExpired:
                status = None
            why = f"exited with status {status}" if status is not None else f"did not listen within {timeout_s:.0f} s"
            raise ServerFailed(
                f"`world-modality serve --checkpoint {self.checkpoint}` {why}; its last words: "
                f"{' | '.join(self._last) or 'none'}; its console is in {self.log}"
            )
        try:
            with _LOCAL.open(f"http://{self.address}/healthz", timeout=30) as reply:
                healthy = reply.status == 200
        except OSError as err:
            healthy, err_text = False, f"{type(err).__name__}: {err}"
        else:
            err_text = "it did not answer OK"
        if not healthy:
            raise ServerFailed(
                f"the server of {self.checkpoint} listens on {self.address} but GET /healthz failed ({err_text}); "
                f"its console is in {self.log}"
            )
        return self.address

    def stats(self, timeout_s: float = 30.0) -> dict | None:
        """The server's batch counts (`GET /stats`), or None when it cannot answer."""
        try:
            with _LOCAL.open(f"http://{self.address}/stats", timeout=timeout_s) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError):
            return None

    def note_evaluation(self, suite: str, before: dict | None, after: dict | None) -> None:
        """How many of one evaluation's requests went through the model stacked with others: those agree with a
        local policy to float rounding, not bit for bit, so an episode's outcome may differ from a local one."""
        if before is None or after is None:
            self.note(f"[study] {suite}: the server's counts could not be read")
            return
        requests = after["requests"] - before["requests"]
        stacked = _stacked(after) - _stacked(before)
        self.note(f"[study] {suite}: {requests} requests served, {stacked} of them in batches of 2 or more")

    def stop(self) -> None:
        """Stop the server (its counts written first); once is enough."""
        from .children import stop

        if self._file.closed:
            return
        stats = self.stats(timeout_s=5) if self.address is not None and self.proc.poll() is None else None
        if stats is not None:
            self.note(f"[study] the server answered {json.dumps(stats)}")
        status = stop(self.proc)
        self._reader.join(timeout=30)
        self.note(f"[study] server pid {self.proc.pid} stopped (exit status {status})")
        with self._lock:
            self._file.close()


def _stacked(stats: dict) -> int:
    return sum(int(size) * n for size, n in stats["batch_sizes"].items() if int(size) > 1)


_current: Server | None = None  # at most one server lives: the run being evaluated


def serve_run(checkpoint: Path, log: Path) -> Server:
    """The running server of `checkpoint`, or a new one (any other stopped first); ready to answer."""
    global _current
    if _current is not None and (_current.checkpoint != checkpoint or _current.proc.poll() is not None):
        stop_serving()
    if _current is None:
        server = Server(checkpoint, log)
        try:
            server.wait_ready()
        except BaseException:  # an interrupt while the checkpoint loads included
            server.stop()
            raise
        _current = server
    return _current


def stop_serving() -> None:
    """Stop the server, if one runs."""
    global _current
    server, _current = _current, None
    if server is not None:
        server.stop()


atexit.register(stop_serving)


@contextlib.contextmanager
def policy_server(s, checkpoint: Path, suite: str, last: bool, log: Path) -> Iterator[str | None]:
    """HOST:PORT of the server of `checkpoint` for one evaluation on `suite`, or None without --serve (each simulator
    worker then loads the policy). The server is kept for the run's next evaluation and stopped after its last, or
    at once when this evaluation raises or is interrupted."""
    if not s.serve:
        yield None
        return
    server = serve_run(Path(checkpoint), log)
    before = server.stats()
    try:
        yield server.address
    except BaseException:
        stop_serving()
        raise
    server.note_evaluation(suite, before, server.stats())
    if last:
        stop_serving()
