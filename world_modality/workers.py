"""Spawned worker processes for simulator jobs, each job bounded by a wall-clock limit.

A simulator or renderer that hangs (a GL driver wait, a deadlocked library) would otherwise stall a
generation or evaluation run forever: here a job past its limit has its workers killed and restarted,
is retried, and is then reported as timed out, while the jobs that shared the pool run again.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Hashable


@dataclass(frozen=True)
class JobTimedOut:
    """The result of a job that passed its limit on every attempt."""

    seconds: float
    attempts: int

    def __str__(self) -> str:
        return f"timed out after {self.seconds:.0f} s on each of {self.attempts} attempt(s)"


@dataclass
class _Running:
    fn: Callable
    args: tuple
    started: float
    attempt: int


class WorkerPool:
    """At most `workers` jobs at once on fresh (spawned) interpreters; results come back as they finish.

    `timeout_s` bounds one attempt of one job, counted from when it was handed to a free worker (so it
    includes the worker's start-up on the first job); None disables the limit. A job past its limit is
    tried `retries` more times before `next_finished` returns `JobTimedOut` for it.
    """

    def __init__(self, workers: int, timeout_s: float | None = None, retries: int = 1,
                 initializer: Callable | None = None, initargs: tuple = ()):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}.")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}.")
        self.workers, self.timeout_s, self.retries = workers, timeout_s, retries
        self._init = (initializer, initargs)
        self._running: dict[Future, tuple[Hashable, _Running]] = {}
        self._ready: deque[tuple[Hashable, Any]] = deque()
        self.restarts = 0
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # Fresh interpreters: MuJoCo's GL context and robosuite's globals must not be forked.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=self._init[0], initargs=self._init[1])

    @property
    def free(self) -> int:
        return self.workers - len(self._running)

    def keys(self) -> list[Hashable]:
        return [key for key, _ in self._running.values()]

    def __len__(self) -> int:
        """Jobs submitted whose results have not been returned yet."""
        return len(self._running) + len(self._ready)

    def submit(self, key: Hashable, fn: Callable, *args) -> None:
        if self.free <= 0:
            raise RuntimeError(f"all {self.workers} workers are busy; wait for next_finished() before submitting {key!r}.")
        self._start(key, _Running(fn, args, 0.0, 1))

    def _start(self, key: Hashable, job: _Running) -> None:
        job.started = time.monotonic()
        self._running[self._pool.submit(job.fn, *job.args)] = (key, job)

    def next_finished(self) -> tuple[Hashable, Any]:
        """Block until a job finishes; return (key, result). A job's exception is raised here."""
        while not self._ready:
            if not self._running:
                raise RuntimeError("next_finished() called with no job submitted.")
            timeout = None
            if self.timeout_s is not None:
                first_deadline = min(job.started for _, job in self._running.values()) + self.timeout_s
                timeout = max(0.0, first_deadline - time.monotonic())
            done, _ = wait(self._running, timeout=timeout, return_when=FIRST_COMPLETED)
            if done:
                fut = next(iter(done))
                key, _ = self._running.pop(fut)
                return key, fut.result()
            self._restart_after_timeout()
        return self._ready.popleft()

    def _restart_after_timeout(self) -> None:
        now = time.monotonic()
        self._kill()
        self.restarts += 1
        running, self._running = self._running, {}
        self._pool = self._new_pool()
        for fut, (key, job) in running.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._ready.append((key, fut.result()))  # finished just before the kill
            elif now - job.started < self.timeout_s:
                self._start(key, job)  # an innocent bystander of the restart: run it again from the start
            elif job.attempt <= self.retries:
                job.attempt += 1
                self._start(key, job)
            else:
                self._ready.append((key, JobTimedOut(self.timeout_s, job.attempt)))

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

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an error or Ctrl-C, results so far are already saved by the caller: do not wait for the workers.
        self.close(kill=exc_type is not None)
