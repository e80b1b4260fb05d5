"""Worker pool: results as jobs finish, a stuck job killed, retried and reported, its neighbours rerun."""

import os
import time

import pytest

from world_modality.workers import JobTimedOut, WorkerPool


def _square(x):
    return x * x


def _sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def _fail(message):
    raise ValueError(message)


def _pid(_):
    return os.getpid()


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
        results = dict(pool.next_finished() for _ in range(2))
    assert results["slow"] == "done"
    assert isinstance(results["stuck"], JobTimedOut) and results["stuck"].attempts == 2
    assert pool.restarts == 2 and time.monotonic() - start < 60


def test_a_job_error_is_raised_to_the_caller():
    with pytest.raises(ValueError, match="bad input 7"):
        with WorkerPool(1, timeout_s=60) as pool:
            pool.submit("x", _fail, "bad input 7")
            pool.next_finished()


def test_workers_are_separate_processes_and_submitting_past_capacity_is_refused():
    with WorkerPool(1) as pool:
        pool.submit("a", _pid, 0)
        with pytest.raises(RuntimeError, match="busy"):
            pool.submit("b", _pid, 0)
        assert pool.next_finished()[1] != os.getpid()


@pytest.mark.parametrize("kwargs, word", [({"workers": 0}, "workers"), ({"workers": 1, "timeout_s": 0}, "timeout_s")])
def test_bad_settings_name_the_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        WorkerPool(**kwargs)
