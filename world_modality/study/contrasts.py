"""The study's paired contrasts: the named ones whose arms ran (E2 − E0, the primary; E2 − E2-Present, E2-Present −
E0, E2-State − E0), else the second experiment − the first, and every arm no named contrast covers (an external arm
among them) against the first; each conditional on these checkpoints (analysis/pooling) and at method level
(analysis/levels, training seeds resampled too), the secondary ones Holm-adjusted, with the smallest difference the
study could detect."""

from __future__ import annotations

from ..analysis.levels import MDD_FORMULA, holm, minimum_detectable_difference, two_level_contrast
from .external_arms import EXTERNAL, one_run, partnered

ALPHA, POWER = 0.05, 0.8


def e2_arm(experiments: tuple[str, ...]) -> str | None:
    """The arm that plays E2 in the named contrasts: E2, else E2-Pretrained (E2 with the pretrained encoder)."""
    return next((e for e in ("E2", "E2-Pretrained") if e in experiments), None)


def named_pairs(experiments: tuple[str, ...], encoders: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(a, b, question) of each named contrast b − a whose two arms ran. The foresight contrast needs E2 and
    E2-Present to share an encoder (`encoders`: experiment -> world_encoder.encoder_of), else it would mix
    foresight with the encoder's weights."""
    e2 = e2_arm(experiments)
    same = encoders is None or encoders.get(e2) == encoders.get("E2-Present")
    named = [
        ("E0", e2, "does the world modality help"),
        ("E2-Present", e2, "foresight, given the same history and encoder") if same else None,
        ("E0", "E2-Present", "history, without foresight"),
        ("E0", "E2-State", "the upper bound: privileged object state (positive control)"),
        ("E2", "E2-Pretrained", "a pretrained encoder against the random one"),
    ]
    return [p for p in named if p and p[0] in experiments and p[1] in experiments and p[0] != p[1]]


def pairs_of(experiments: tuple[str, ...], encoders: dict[str, str] | None = None) -> list[tuple[str, str, str, str]]:
    """(a, b, role, question) for every contrast b − a, the primary first: E2 − E0 when both ran, else the first
    named contrast, else the second experiment − the first; then the other named ones, then each arm that no
    contrast covers against E0 (or the first experiment). `experiments` may end with the study's external arms
    (external_arms.arms_of): named in no contrast, each is one such arm."""
    if len(experiments) < 2:
        return []
    named = named_pairs(experiments, encoders)
    if named:
        primary, rest = named[0], named[1:]
    else:
        primary, rest = (experiments[0], experiments[1], "the second experiment against the first"), []
    out = [(*primary[:2], "primary", primary[2])] + [(a, b, "secondary", q) for a, b, q in rest]
    first = "E0" if "E0" in experiments else experiments[0]
    covered = {e for a, b, _, _ in out for e in (a, b)}
    out += [(first, e, "secondary", f"against {first}") for e in experiments if e not in covered and e != first]
    return out


def _runs(evals: list[dict], pair: tuple[str, str], suites: set[str]) -> list[dict]:
    return [
        {
            "preset": r["experiment"],
            "train_seed": r["seed"],
            "head": r.get("episodes", []),
            "head_errors": r.get("errors", []),
            **({"protocol": r["protocol"]} if r.get("protocol") else {}),
            "external": r.get("train_suite") == EXTERNAL,
        }
        for r in evals
        if r["experiment"] in pair and r["suite"] in suites and "not_run" not in r
    ]


def _outcomes(side: dict) -> dict:
    """{training seed: {(suite, task, start): success}} from one side of pooling.pooled_sides (errors left out)."""
    out: dict = {}
    for (seed, *start), v in side.items():
        if v is not None:
            out.setdefault(seed, {})[tuple(start)] = v
    return out


def mdd(pair: dict) -> dict:
    """The smallest difference detectable at 80% power, two-sided alpha 0.05, sized on the discordance measured and
    the number of starts (clusters) as the effective n."""
    psi = (pair["a_only"] + pair["b_only"]) / pair["n_pairs"]
    d = minimum_detectable_difference(psi, pair["n_clusters"], ALPHA, POWER)
    return {
        "diff": d,
        "discordance": psi,
        "n": pair["n_clusters"],
        "alpha": ALPHA,
        "power": POWER,
        "formula": MDD_FORMULA,
        "kind": "derived",
    }


def paired(evals: list[dict], pair: tuple[str, str], suites: set[str]) -> dict | None:
    """Conditional (clusters = starts, pooling.pooled_paired) and method-level contrast of pair[1] − pair[0], over
    the pairs run under one protocol; pairs refused for differing protocols are kept in "refused" (also when none
    is left, then without a difference). None without any shared start."""
    from ..analysis.pooling import pooled_paired, pooled_sides

    runs = partnered(_runs(evals, pair, suites))
    if not runs:
        return None
    sides = pooled_sides(runs, pair)
    p = pooled_paired(runs, pair)
    if not p:
        return {"refused": sides["refused"], "n_refused": sides["n_refused"]} if sides["refused"] else None
    out = {k: p[k] for k in ("n_pairs", "diff", "p", "test", "n_clusters", "a_only", "b_only")}
    out["diff_ci"] = list(p["diff_ci"])
    out["diff_ci_method"] = p.get("diff_ci_method")
    out["refused"], out["n_refused"] = p.get("refused", []), p.get("n_refused", 0)
    out["protocol_note"] = p.get("protocol_note")
    a, b = _outcomes(sides["a"]), _outcomes(sides["b"])
    external = {r["preset"] for r in runs if r["external"]}  # one run each: its copies are no seeds to redraw
    a, b = (one_run(a) if pair[0] in external else a), (one_run(b) if pair[1] in external else b)
    out["method_level"] = two_level_contrast(a, b) if a and b else None
    out["mdd"] = mdd(out)
    return out


def contrasts(
    experiments: tuple[str, ...], suites: tuple[str, ...], evals: list[dict], encoders: dict[str, str] | None = None
) -> list[dict]:
    """Every contrast, per suite and over all suites; "p_holm" adjusts the secondary ones' all-suite conditional
    (and, where given, method-level) p-values as one family each; the primary is never adjusted."""
    out = []
    for a, b, role, question in pairs_of(experiments, encoders):
        out.append(
            {
                "role": role,
                "question": question,
                "a": a,
                "b": b,
                "per_suite": {suite: paired(evals, (a, b), {suite}) for suite in suites},
                "average": paired(evals, (a, b), set(suites)),
            }
        )
    secondary = [c["average"] for c in out if c["role"] == "secondary" and (c["average"] or {}).get("n_pairs")]
    for p, adj in zip(secondary, holm([c["p"] for c in secondary]), strict=True):
        p["p_holm"] = adj
    levels = [c["method_level"] for c in secondary if c["method_level"]]
    for m, adj in zip(levels, holm([m["p"] for m in levels]), strict=True):
        m["p_holm"] = adj
    return out


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _no_pairs(p: dict | None) -> str:
    return f"no pairs ({p['n_refused']} refused: other protocol)" if p and p.get("n_refused") else "no pairs"


def fmt_conditional(p: dict | None) -> str:
    if not p or "diff" not in p:
        return _no_pairs(p)
    lo, hi = p["diff_ci"]
    text = f"{_pts(p['diff'])} pts [{_pts(lo)}, {_pts(hi)}], p = {p['p']:.3g}"
    if p.get("p_holm") is not None:
        text += f" (Holm {p['p_holm']:.3g})"
    return text + f" ({p['n_pairs']} pairs, {p['n_clusters']} starts)"


def fmt_method(p: dict | None) -> str:
    m = (p or {}).get("method_level")
    if not m:
        return _no_pairs(p)
    lo, hi = m["diff_ci"]
    text = f"{_pts(m['diff'])} pts [{_pts(lo)}, {_pts(hi)}]"
    if m["p"] is None:
        return f"{text}; {m['p_note']} ({m['seeds_a']} and {m['seeds_b']})"
    text += f", p = {m['p']:.3g}"
    return text + (f" (Holm {m['p_holm']:.3g})" if m.get("p_holm") is not None else "")


def fmt_mdd(p: dict | None) -> str:
    m = (p or {}).get("mdd")
    if not m or m["diff"] is None:
        return "not derivable (no discordant pair, or too few starts)"
    return f"±{100 * m['diff']:.1f} pts (ψ = {m['discordance']:.2f}, n = {m['n']} starts)"


def contrast_table(cs: list[dict]) -> list[str]:
    """One row per contrast: its question, role, both interval kinds and the smallest detectable difference."""
    lines = [
        "| Contrast | Question | Role | Conditional on these checkpoints | Method level "
        "| Smallest detectable difference |",
        "|---|---|---|---|---|---|",
    ]
    for c in cs:
        p = c["average"]
        lines.append(
            f"| {c['b']} − {c['a']} | {c.get('question', '')} | {c['role']} | {fmt_conditional(p)} | {fmt_method(p)} "
            f"| {fmt_mdd(p)} |"
        )
    return lines


def render_contrasts(cs: list[dict]) -> list[str]:
    """The contrasts section of report.md: both interval kinds, named, and the refused pairs if any."""
    if not cs:
        return []
    lines = [
        "",
        "## Contrasts",
        "",
        "Conditional on these checkpoints: the trained runs are held fixed and only the starts are resampled "
        "(cluster = suite, task, initial state; cluster bootstrap interval, cluster sign-flip p; analysis/pooling.py)"
        ": it says whether these checkpoints differ, not whether the training method does. Method level: a "
        "two-level bootstrap that draws each arm's training seeds independently, then the starts (analysis/"
        "levels.py); its p is given only with at least 3 seeds per arm. The primary contrast is not adjusted; "
        "secondary ones carry Holm-adjusted p-values. Smallest detectable difference (derived, 80% power, two-sided "
        f"α = 0.05): the δ solving {MDD_FORMULA}, ψ the measured share of discordant pairs, n the number of starts.",
        "",
        *contrast_table(cs),
    ]
    refused = [c for c in cs if (c["average"] or {}).get("refused")]
    if refused:
        from ..analysis.protocol import refused_text

        lines += ["", "### Pairs refused: the two evaluations ran under different protocols", ""]
        lines += [f"- {c['b']} − {c['a']}: {refused_text(c['average']['refused'], (c['a'], c['b']))}" for c in refused]
    notes = [c for c in cs if (c["average"] or {}).get("protocol_note")]
    lines += [""] * bool(notes) + [f"- {c['b']} − {c['a']}: {c['average']['protocol_note']}" for c in notes]
    return lines
