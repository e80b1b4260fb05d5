"""Which of a run's evaluations the report merges: one identity per (suite, memory), the others set apart.

Two eval folders of one run, suite and memory mode merge into one rate only when their settings.json "identity"
(checkpoint step and weights, seed, step limit, replanning interval, ...) is the same; the checkpoint's path alone
does not count where the weights' hash is recorded. Where they differ (a `--max_steps 10` smoke test beside the
full evaluation, an evaluation of an earlier checkpoint), the headline is the evaluation of the newest checkpoint
step, then the one with the most episodes, then the longest step limit, then the first folder by name; an
evaluation that recorded no identity merges only where none of its group did. Every other evaluation is set apart:
never in a rate, and listed in the report with its own rate and the fields in which it differs."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluate.episodes import episode_key, outcome, resolve


def _comparable(identity: dict | None) -> dict | None:
    if identity is None or "weights_sha256" not in identity:
        return identity
    return {k: v for k, v in identity.items() if k != "checkpoint"}  # where the weights lay, not what they are


def _rank(identity: dict | None, n: int) -> tuple:
    ident = identity or {}
    step, limit = ident.get("checkpoint_step"), ident.get("step_limit")
    num = (int, float)
    return (
        identity is not None,
        step if isinstance(step, num) else float("-inf"),
        n,
        limit if isinstance(limit, num) else float("-inf"),
    )


def one_identity(recs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the records of the headline evaluation of each (suite, memory), the evaluations set apart). Records carry
    "_source" (their eval folder) and "_identity" (its settings.json identity, or None)."""
    groups: dict[tuple, dict[Path, list[dict]]] = {}
    for r in recs:
        groups.setdefault((r["suite"], r["memory"]), {}).setdefault(r["_source"], []).append(r)
    kept, apart = [], []
    for (suite, memory), by_folder in groups.items():
        ids: dict[str, tuple[dict | None, list[Path]]] = {}
        for d in sorted(by_folder):
            ident = by_folder[d][0]["_identity"]
            ids.setdefault(json.dumps(_comparable(ident), sort_keys=True, default=str), (ident, []))[1].append(d)
        if len(ids) == 1:
            kept += [r for rs in by_folder.values() for r in rs]
            continue

        def size(folders: list[Path]) -> int:
            return len({episode_key(r) for d in folders for r in by_folder[d]})

        head, head_dirs = max(ids.values(), key=lambda v: _rank(v[0], size(v[1])))
        kept += [r for d in head_dirs for r in by_folder[d]]
        for ident, folders in ids.values():
            if folders is head_dirs:
                continue
            for d in folders:
                finished, errors = resolve(by_folder[d])
                apart.append(
                    {
                        "dir": d,
                        "suite": suite,
                        "memory": memory,
                        "identity": ident,
                        "checkpoint_step": (ident or {}).get("checkpoint_step"),
                        "n": len(finished),
                        "k": sum(outcome(e) == "success" for e in finished),
                        "errors": len(errors),
                        "differs": _differs(ident, head),
                        "headline": head_dirs,
                    }
                )
    return kept, apart


def _differs(ident: dict | None, head: dict | None) -> dict | None:
    """field -> (this evaluation's value, the headline's); None where this evaluation recorded no identity."""
    if ident is None:
        return None
    a, b = _comparable(ident), _comparable(head) or {}
    return {
        k: (a.get(k, NOT_RECORDED), b.get(k, NOT_RECORDED))
        for k in sorted(set(a) | set(b))
        if a.get(k, NOT_RECORDED) != b.get(k, NOT_RECORDED)
    }


class _NotRecorded:
    """A field one identity lacks (it joined the identity after that evaluation ran)."""

    def __repr__(self) -> str:
        return "not recorded"


NOT_RECORDED = _NotRecorded()


def apart_text(a: dict) -> str:
    """One evaluation set apart, in words: where it is, what it holds, how it differs from the headline."""
    rate = f"{a['k']}/{a['n']}" + (f", +{a['errors']} errors" if a["errors"] else "")
    where = ", ".join(d.name for d in a["headline"])
    if a["differs"] is None:
        how = f"it recorded no identity, so it cannot be shown to be the evaluation in {where}"
    else:
        how = "; ".join(f"{k} {v[0]!r} there, {v[1]!r} in {where}" for k, v in a["differs"].items())
    step = "not recorded" if a["checkpoint_step"] is None else a["checkpoint_step"]
    return (
        f"eval folder {a['dir'].name} ({a['suite']}, memory {a['memory']}, checkpoint step {step}: {rate} "
        f"successes) is another evaluation than the one reported ({how}); it is in no rate"
    )
