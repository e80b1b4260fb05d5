"""Worker pool: results as jobs finish; stuck jobs and dead workers restarted, retried and reported;
errors (a job's or the initializer's) raised with their own type."""

import os
import signal
import time

import pytest

from world_modality.workers import DIED, JobLost, WorkerPool, WorkersKeepDying


def _square(x):
    return x * x


def _sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def _fail(message):
    raise ValueError(message)


def _pid(_):
    return os.getpid()


def _die(_):
    os.kill(os.getpid(), signal.SIGKILL)


def _bad_init(message):
    raise FileNotFoundError(message)


def _dying_init():
    os._exit(3)


def _drain(pool):
    return dict(pool.next_finished() for _ in range(len(pool)))


def test_results_come_back_for_every_job():
    with WorkerPool(2, timeout_s=60) as pool:
        got, todo = {}, list(range(5))
        while todo or len(pool):
            while todo and pool.free:
                x = todo.pop(0)
                pool.submit(x, _square, x)
            key, value = pool.next_finished()
            got[key] = value
    assert got == {x: x * x for x in range(5)} and pool.restarts == 0


def test_a_stuck_job_is_retried_then_reported_and_its_neighbour_still_finishes():
    start = time.monotonic()
    with WorkerPool(2, timeout_s=6, retries=1) as pool:
        pool.submit("stuck", _sleep_then, 3600, "never")
        time.sleep(4)
        pool.submit("slow", _sleep_then, 1.5, "done")  # still running when the first restart kills it at 6 s
        results = _drain(pool)
    assert results["slow"] == "done"
    assert isinstance(results["stuck"], JobLost) and results["stuck"].attempts == 2
    assert "timed out after 6 s" in str(results["stuck"])
    assert pool.restarts == 2 and time.monotonic() - start < 60


def test_jobs_stuck_together_are_charged_together():
    # Three hung jobs cost two restarts (first attempt, retry), not two per job.
    with WorkerPool(3, timeout_s=3, retries=1) as pool:
        for k in range(3):
            pool.submit(k, _sleep_then, 3600, k)
        results = _drain(pool)
    assert all(isinstance(r, JobLost) and r.attempts == 2 for r in results.values())
    assert pool.restarts == 2


def test_a_dead_worker_is_replaced_and_its_job_retried_then_reported():
    with WorkerPool(1, timeout_s=60, retries=1) as pool:
        pool.submit("dies", _die, 0)
        key, lost = pool.next_finished()
        pool.submit("after", _square, 3)
        assert pool.next_finished() == ("after", 9)
    assert key == "dies" and isinstance(lost, JobLost) and lost.attempts == 2 and lost.reason == DIED


def test_a_job_error_is_raised_to_the_caller():
    with pytest.raises(ValueError, match="bad input 7"):
        with WorkerPool(1, timeout_s=60) as pool:
            pool.submit("x", _fail, "bad input 7")
            pool.next_finished()


def test_an_initializer_error_is_raised_with_its_own_type_not_as_a_broken_pool():
    with pytest.raises(FileNotFoundError, match="no checkpoint at /nowhere"):
        with WorkerPool(1, timeout_s=60, initializer=_bad_init, initargs=("no checkpoint at /nowhere",)) as pool:
            pool.submit("x", _square, 2)
            pool.next_finished()


def test_workers_that_die_at_start_end_the_run_instead_of_retrying_forever():
    with pytest.raises(WorkersKeepDying, match="died 3 times in a row"):
        with WorkerPool(1, timeout_s=60, retries=10, initializer=_dying_init) as pool:
            pool.submit("x", _square, 2)
            pool.next_finished()


def test_workers_are_separate_processes_and_submitting_past_capacity_is_refused():
    with WorkerPool(1) as pool:
        pool.submit("a", _pid, 0)
        assert pool.keys() == ["a"]
        with pytest.raises(RuntimeError, match="busy"):
            pool.submit("b", _pid, 0)
        assert pool.next_finished()[1] != os.getpid()


@pytest.mark.parametrize("kwargs, word", [({"workers": 0}, "workers"), ({"workers": 1, "timeout_s": 0}, "timeout_s")])
def test_bad_settings_name_the_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        WorkerPool(**kwargs)


def _policy(_):
    return os.sched_getscheduler(0)


@pytest.mark.skipif(
    not hasattr(os, "sched_setscheduler") or os.geteuid() != 0, reason="needs Linux and root to go real-time"
)
def test_workers_of_a_real_time_parent_run_at_normal_scheduling():
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    with WorkerPool(1, timeout_s=60) as pool:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        try:
            pool.submit("p", _policy, 0)  # the worker process starts here and inherits the parent's policy
        finally:
            os.sched_setscheduler(0, *before)
        assert pool.next_finished() == ("p", os.SCHED_OTHER)
