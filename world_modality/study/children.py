"""Processes a study starts (a run's torchrun launcher, a run's policy server) that must not outlive it: each gets
a parent-death signal (Linux), and `stop` ends it with everything it started, SIGTERM first, then SIGKILL."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

STOP_GRACE_S = 30.0  # torchrun gives its workers 30 s between its own SIGTERM and SIGKILL as well
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def start(cmd: list[str], **popen) -> subprocess.Popen:
    """`cmd` as a child that receives SIGTERM when the study dies, even by SIGKILL (on Linux): a torchrun left behind
    would go on training into the run's folder while a rerun trains there too."""
    parent = os.getpid()

    def die_with_parent() -> None:  # in the child, between fork and exec
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the study died before the signal was armed
            os._exit(1)

    preexec = die_with_parent if _LIBC is not None else None
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=preexec, **popen)


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """End `proc` and its descendants; its exit status. SIGTERM lets torchrun stop its workers (which it starts in
    sessions of their own, out of reach of a signal to its group) and a server close; whatever is left after
    `grace_s` is killed."""
    import psutil  # accelerate's dependency

    if proc.poll() is not None:
        return proc.returncode
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        try:
            p.kill()  # psutil refuses a pid reused since the snapshot
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return proc.returncode
