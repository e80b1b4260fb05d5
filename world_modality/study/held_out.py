"""Results on the stored states 10-49 alone, beside those on every state run: the recipe was tuned on each task's
states 0-9 (docs/RESULTS.md), so only 10-49 are free of that choice. Shown when a study ran all of 10-49 and some
state below 10."""

from __future__ import annotations

TUNING_STATES = range(0, 10)  # the stored states the CPU recipe was chosen on
HELD_OUT_STATES = tuple(range(10, 50))


def evaluated_states(s) -> list[int]:
    """The stored initial states each standard-suite task runs, in order."""
    if s.init_states is not None:
        return sorted(s.init_states)
    return list(range(s.episodes_per_task or 50))


def held_out_view(s) -> tuple[int, ...] | None:
    """HELD_OUT_STATES when the study's standard suites ran every one of them and some tuning state too (else the
    view would repeat the main table, or hold states the study did not run); None otherwise."""
    states = set(evaluated_states(s))
    if set(HELD_OUT_STATES) <= states and states & set(TUNING_STATES):
        return HELD_OUT_STATES
    return None


def restrict(evals: list[dict], suites: tuple[str, ...], states: tuple[int, ...]) -> list[dict]:
    """The standard-suite evaluation records with only the episodes (and errors) of `states`; LIBERO-PRO records are
    left out (their states are the first n of the perturbed suite, not the stored ones the recipe was tuned on)."""
    keep = set(states)
    out = []
    for r in evals:
        if r["suite"] not in suites:
            continue
        r = dict(r)
        for key in ("episodes", "errors"):
            if key in r:
                r[key] = [e for e in r[key] if e.get("init_index") in keep]
        out.append(r)
    return out
