"""The closed-loop episodes file: one JSON line per attempt, each ending as a success, a failure or an error.

A failure is the policy's (a timeout); an error is an exception (the simulator, the world encoder, out of
memory...) and says nothing about the policy: it is kept apart, never counted in a rate, and retried when
the same evaluation runs again. Files written before outcomes were recorded hold successes and failures
only (their exceptions were written as failures and cannot be told apart any more).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

OUTCOMES = ("success", "failure", "error")
KEY_FIELDS = ("suite", "task_id", "init_index", "memory", "seed")


def outcome(rec: dict) -> str:
    """'success', 'failure' or 'error' of one episode record."""
    out = rec.get("outcome")
    if out is None:
        return "success" if rec.get("success") else "failure"
    if out not in OUTCOMES:
        raise ValueError(f"episode record has outcome {out!r}; expected one of {OUTCOMES}.")
    return out


def is_error(rec: dict) -> bool:
    return outcome(rec) == "error"


def episode_key(rec: dict) -> tuple:
    return tuple(rec.get(k) for k in KEY_FIELDS)


def resolve(records: Iterable[dict], key: Callable[[dict], tuple] = episode_key) -> tuple[list[dict], list[dict]]:
    """(finished, errors): per key the first finished record (a success or a failure); the errors are the
    last error record of each key that never finished, so an error that a rerun fixed is not counted."""
    finished: dict[tuple, dict] = {}
    errors: dict[tuple, dict] = {}
    for r in records:
        k = key(r)
        if is_error(r):
            errors[k] = r
        elif k not in finished:
            finished[k] = r
    return list(finished.values()), [e for k, e in errors.items() if k not in finished]
