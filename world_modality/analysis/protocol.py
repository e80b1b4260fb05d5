"""When two arms' episodes make a pair: the protocol they ran under must match, not only the start.

The protocol is how an episode was run, whatever the policy: the step limit, the evaluation seed, the suite (and
its starts, which the pair key holds), the render profile the cameras used, and any further field an evaluation
records (a protocol is an open dict, compared field by field). How an arm acts (its replanning interval, its chunk
length) is the arm's own and may differ between the two sides. A shared start whose two protocols differ is
refused: left out of every statistic and listed apart, grouped by the two protocols. Where a side recorded no
protocol (evaluations from before it was recorded) the start pairs as before, and the result names those runs."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

# The fields of an evaluation's settings.json "identity" that belong to the protocol; a field recorded there later
# (e.g. render settings) joins the protocol by its name being added here.
PROTOCOL_FIELDS = ("suite", "seed", "step_limit", "render_profile")
LABELS = {"suite": "suite", "seed": "evaluation seed", "step_limit": "step limit", "render_profile": "render profile"}


def protocol_of(identity) -> dict | None:
    """The protocol part of an evaluation identity; None where the evaluation recorded none."""
    if not isinstance(identity, dict):
        return None
    out = {k: identity[k] for k in PROTOCOL_FIELDS if k in identity}
    return out or None


def differing(a: Mapping, b: Mapping) -> list[str]:
    """The fields both protocols record with different values. A field only one side records (a setting recorded
    since the other evaluation ran) cannot be compared: it is not a difference, and split_by_protocol names it."""
    return sorted((k for k in set(a) & set(b) if a[k] != b[k]), key=str)


def describe(protocol: Mapping | None) -> str:
    """A protocol in words: 'step limit 220, evaluation seed 0, suite libero_spatial'."""
    if not protocol:
        return "not recorded"
    order = [
        *(k for k in ("step_limit", "seed", "suite", "render_profile") if k in protocol),
        *sorted(set(protocol) - set(LABELS)),
    ]
    return ", ".join(f"{LABELS.get(k, k)} {protocol[k]}" for k in order)


def split_by_protocol(
    a: Mapping[Hashable, bool | None],
    b: Mapping[Hashable, bool | None],
    pa: Mapping[Hashable, dict | None],
    pb: Mapping[Hashable, dict | None],
) -> dict:
    """Refuse the shared keys whose protocols differ.

    a, b: key -> outcome of each side; pa, pb: key -> that episode's protocol (None: not recorded). Returns the
    two sides without the refused keys ("a", "b"), the refusals grouped by their pair of protocols ("refused":
    [{"key": the first such key, "n", "a", "b", "differs"}]), "n_refused", "unknown" (shared keys where a side
    recorded no protocol; kept), "one_sided" (fields recorded on one side of a kept pair only) and "protocols"
    (the distinct protocols of the kept shared keys)."""
    groups: dict[tuple, dict] = {}
    unknown, seen, refused, one_sided = 0, {}, set(), set()
    for k in sorted(set(a) & set(b), key=repr):
        x, y = pa.get(k), pb.get(k)
        if not x or not y:
            unknown += 1
            continue
        diff = differing(x, y)
        if not diff:
            seen.setdefault(repr(sorted(x.items(), key=str)), x)
            one_sided |= set(x) ^ set(y)
            continue
        g = groups.setdefault(
            (repr(sorted(x.items(), key=str)), repr(sorted(y.items(), key=str))),
            {"key": k, "n": 0, "a": dict(x), "b": dict(y), "differs": diff},
        )
        g["n"] += 1
        refused.add(k)
    return {
        "a": {k: v for k, v in a.items() if k not in refused},
        "b": {k: v for k, v in b.items() if k not in refused},
        "refused": list(groups.values()),
        "n_refused": len(refused),
        "unknown": unknown,
        "one_sided": sorted(one_sided, key=str),
        "protocols": list(seen.values()),
    }


def refused_text(refused: list[dict], names: tuple[str, str]) -> str:
    """The refused pairs in one sentence per group of protocols."""
    parts = []
    for g in refused:
        fields = ", ".join(
            f"{LABELS.get(f, f)} {g['a'].get(f, 'not recorded')} ({names[0]}) vs "
            f"{g['b'].get(f, 'not recorded')} ({names[1]})"
            for f in g["differs"]
        )
        parts.append(f"{g['n']} start(s) such as {_key_text(g['key'])}: {fields}")
    return "; ".join(parts)


def _key_text(key: tuple) -> str:
    *seed, suite, task, init = key
    return f"{suite} task {task} init {init}" + (f" (training seed {seed[0]})" if seed else "")


def pairing_sentence(pc: Mapping, names: tuple[str, str]) -> str:
    """How the pairs were matched: 'identical … episodes' only where every pair's two protocols were recorded and
    equal; otherwise the same starts, and which runs recorded no protocol."""
    if pc.get("protocol_note"):
        return (
            f"the same (suite, task, initial state) starts; {pc['protocol_note']}, so those pairs are not known to "
            "share their protocol"
        )
    protocols = "; ".join(describe(p) for p in pc.get("protocols", []))
    return f"identical (suite, task, initial state) episodes under one protocol ({protocols})"


def refusal_blocks(pc: Mapping, names: tuple[str, str]) -> list[tuple]:
    """The report's warning on pairs refused for differing protocols; nothing when none were."""
    if not pc.get("refused"):
        return []
    return [
        (
            "warn",
            f"{pc['n_refused']} shared start(s) of {names[1]} and {names[0]} were run under different protocols "
            f"and are left out of this comparison (a pair must share its step limit, evaluation seed and starts): "
            f"{refused_text(pc['refused'], names)}. Evaluate both arms under one protocol to compare them there.",
        )
    ]
