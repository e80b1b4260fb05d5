"""Spawned worker processes for simulator jobs, each job bounded by a wall-clock limit.

A simulator or renderer that hangs (a GL driver wait, a deadlocked library) or a worker that dies
(a crash, the out-of-memory killer) would otherwise stall or abort a generation or evaluation run:
here the workers are killed and restarted, the affected jobs retried, and a job that fails every
attempt comes back as `JobLost` while the others go on.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

DIED = "its worker process died (a crash or the out-of-memory killer)"


@dataclass(frozen=True)
class JobLost:
    """The result of a job that timed out, or whose worker died, on every attempt."""

    reason: str
    attempts: int

    def __str__(self) -> str:
        return f"{self.reason}, on each of {self.attempts} attempt(s)"


class WorkersKeepDying(RuntimeError):
    """Workers died again and again before any job finished: the setup, not one job, is broken."""


@dataclass
class _Running:
    fn: Callable
    args: tuple
    started: float
    attempt: int


# --- worker side: an initializer's error is raised by each job, so the parent sees the real error
# instead of a BrokenProcessPool.
_INIT_ERROR: Exception | None = None


def _portable(e: Exception) -> Exception:
    """The same exception type when it rebuilds from its message (so it survives the trip back to
    the parent), else a ValueError or RuntimeError that names the type."""
    message = str(e)
    try:
        clone = type(e)(message)
        if str(clone) == message:
            return clone
    except Exception:
        pass
    return (ValueError if isinstance(e, ValueError) else RuntimeError)(f"{type(e).__name__}: {message}")


def _normal_scheduling() -> None:
    """Leave real-time scheduling inherited from the parent (SVT-AV1 switches its caller to SCHED_FIFO
    99 when run as root): real-time simulator workers on few cores starve each other, up to a hang."""
    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _initialize(fn: Callable | None, args: tuple) -> None:
    global _INIT_ERROR
    _normal_scheduling()
    if fn is None:
        return
    try:
        fn(*args)
    except Exception as e:
        _INIT_ERROR = _portable(e)


def _call(fn: Callable, args: tuple) -> Any:
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    return fn(*args)


# --- parent side -------------------------------------------------------------------------------------
class WorkerPool:
    """At most `workers` jobs at once on fresh (spawned) interpreters; results come back as they finish.

    `timeout_s` bounds one attempt of one job, counted from when it was handed to a free worker (so it
    includes the worker's start-up on the first job); None disables the limit. A job past its limit,
    or running when a worker died (which one died is unknown, so all of them), is tried `retries` more
    times before `next_finished` returns `JobLost` for it. Jobs restarted only because they shared the
    pool with a stuck one are not charged an attempt. An exception raised by a job, or by the
    initializer, is raised by `next_finished`.
    """

    def __init__(
        self,
        workers: int,
        timeout_s: float | None = None,
        retries: int = 1,
        initializer: Callable | None = None,
        initargs: tuple = (),
        max_deaths_in_a_row: int = 3,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}.")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}.")
        self.workers, self.timeout_s, self.retries = workers, timeout_s, retries
        # Jobs started within this much of each other count as stuck together, not one restart each.
        self._slack = 0.0 if timeout_s is None else min(1.0, 0.05 * timeout_s)
        self._init = (initializer, initargs)
        self._running: dict[Future, tuple[Hashable, _Running]] = {}
        self._ready: deque[tuple[Hashable, Any, Exception | None]] = deque()
        self.restarts = 0
        self._deaths_in_a_row, self._max_deaths = 0, max_deaths_in_a_row
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # Fresh interpreters: MuJoCo's GL context and robosuite's globals must not be forked.
        return ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_initialize, initargs=self._init
        )

    @property
    def free(self) -> int:
        return self.workers - len(self._running)

    def keys(self) -> list[Hashable]:
        """Jobs submitted whose results have not been returned yet."""
        return [key for key, _ in self._running.values()] + [key for key, _, _ in self._ready]

    def __len__(self) -> int:
        return len(self._running) + len(self._ready)

    def submit(self, key: Hashable, fn: Callable, *args) -> None:
        if self.free <= 0:
            raise RuntimeError(
                f"all {self.workers} workers are busy; wait for next_finished() before submitting {key!r}."
            )
        self._start(key, _Running(fn, args, 0.0, 1), time.monotonic())

    def _start(self, key: Hashable, job: _Running, now: float) -> None:
        job.started = now
        self._running[self._pool.submit(_call, job.fn, job.args)] = (key, job)

    def next_finished(self) -> tuple[Hashable, Any]:
        """Block until a job finishes; return (key, result), result a `JobLost` for a lost job."""
        while not self._ready:
            if not self._running:
                raise RuntimeError("next_finished() called with no job submitted.")
            timeout = None
            if self.timeout_s is not None:
                first_deadline = min(job.started for _, job in self._running.values()) + self.timeout_s
                timeout = max(0.0, first_deadline - time.monotonic())
            done, _ = wait(self._running, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                self._restart(died=False)
            elif isinstance(next(iter(done)).exception(), BrokenProcessPool):
                self._restart(died=True)
            else:
                fut = next(iter(done))
                key, _ = self._running.pop(fut)
                self._deaths_in_a_row = 0
                return key, fut.result()
        key, value, error = self._ready.popleft()
        if error is not None:
            raise error
        return key, value

    def _restart(self, died: bool) -> None:
        now = time.monotonic()
        self._kill()
        self.restarts += 1
        if died:
            self._deaths_in_a_row += 1
            if self._deaths_in_a_row >= self._max_deaths:
                raise WorkersKeepDying(
                    f"worker processes died {self._deaths_in_a_row} times in a row with no job "
                    "finishing in between; their output above says why."
                )
        running, self._running = self._running, {}
        self._pool = self._new_pool()
        for fut, (key, job) in running.items():
            if fut.done() and not fut.cancelled() and not isinstance(fut.exception(), BrokenProcessPool):
                self._ready.append((key, None, fut.exception()) if fut.exception() else (key, fut.result(), None))
                continue  # finished just before the kill
            stuck = self.timeout_s is not None and now - job.started >= self.timeout_s - self._slack
            if not (died or stuck):
                self._start(key, job, now)  # a bystander of the restart: run again from the start, uncharged
            elif job.attempt <= self.retries:
                job.attempt += 1
                self._start(key, job, now)
            else:
                reason = DIED if died else f"timed out after {self.timeout_s:.0f} s"
                self._ready.append((key, JobLost(reason, job.attempt), None))

    def _kill(self) -> None:
        # ProcessPoolExecutor has no public way to stop a stuck worker; killing its processes breaks the
        # pool, and shutdown then returns at once instead of waiting on the stuck job.
        for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
            proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self, kill: bool = False) -> None:
        if kill:
            self._kill()
        else:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an error or Ctrl-C, results so far are already saved by the caller: do not wait for the workers.
        self.close(kill=exc_type is not None)
