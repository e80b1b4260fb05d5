"""`python -m world_modality.eval_libero --checkpoint CKPT --suite libero_spatial --n_episodes 10`:
the research notes' closed-loop evaluation command (same as `world-modality eval`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import CLOSED_LOOP_MEMORY_MODES, ConfigError
from .errors import run_reporting_errors
from .ids import parse_ids
from .sim.suites import PRO_PERTURBATIONS, STANDARD_SUITES


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint folder, or a run folder (its newest checkpoint); or --arm instead",
    )
    p.add_argument(
        "--suite",
        default="libero_spatial",
        help=f"LIBERO suite: {', '.join(STANDARD_SUITES)}, or a LIBERO-PRO variant <suite>_<perturbation> "
        f"with perturbation {', '.join(PRO_PERTURBATIONS)} (default: 'libero_spatial')",
    )
    p.add_argument(
        "--tasks", default=None, help="task ids of the suite: '0,1', '0-9' or '0-2,5' (default: all tasks of the suite)"
    )
    p.add_argument(
        "--n_episodes",
        type=int,
        default=None,
        help="per task: the benchmark's initial states 0..n-1 (default: all 50, the public protocol)",
    )
    p.add_argument(
        "--init_states",
        default=None,
        help="per task: which stored initial states to run, '10-49' or '0,3,7' (instead of --n_episodes; e.g. "
        "the states never used to tune a recipe)",
    )
    p.add_argument(
        "--memory",
        default=None,
        choices=CLOSED_LOOP_MEMORY_MODES,
        help=f"world-memory mode, one of {', '.join(CLOSED_LOOP_MEMORY_MODES)} (default: the checkpoint's "
        "training mode, predicted or, for E2-Present, present); the others are ablations (oracle is "
        "offline-only: the true future depends on actions not yet taken)",
    )
    p.add_argument(
        "--replan_every", type=int, default=None, help="dataset frames between replans, >= 1 (default: chunk_size // 2)"
    )
    p.add_argument(
        "--temporal_ensemble",
        type=float,
        default=None,
        metavar="M",
        help="ACT's temporal ensembling: each frame's action is the mean of every overlapping chunk's, weighted "
        "exp(-M i), i = 0 the oldest; M is ACT's exponential weight m, e.g. 0.01 (default: off)",
    )
    p.add_argument("--workers", type=int, default=2, help="simulator processes, >= 1 (default: 2)")
    p.add_argument(
        "--seed",
        type=int,
        default=7,
        help="random seed of the simulator (as in the public LIBERO scripts) and of each episode's policy "
        "draws (default: 7)",
    )
    p.add_argument("--video", type=int, default=0, help="rollouts per task saved as mp4, >= 0 (default: 0)")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th episode starting at i (default: '0/1', all)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval/<suite>-<memory>)")
    p.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="control steps per episode, >= 1 (default: the suite's public limit)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where the policy runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default: 'auto')",
    )
    p.add_argument(
        "--allow_train_overlap",
        action="store_true",
        help="evaluate initial states that produced training data (flagged in every record and the report) "
        "instead of refusing",
    )
    p.add_argument(
        "--episode_timeout",
        type=float,
        default=1800,
        help="seconds one episode may take before its worker is killed and the episode retried once "
        "(0: no limit; default: 1800)",
    )
    p.add_argument(
        "--policy_server",
        default=None,
        metavar="HOST:PORT",
        help="ask the policy server there (`world-modality serve` of the same --checkpoint, checked by its "
        "weights' hash) for actions instead of loading the checkpoint in each worker (default: none)",
    )
    p.add_argument(
        "--render_profile",
        default=None,
        help="camera settings to render with; only the profile the policy's training frames were rendered with "
        "(recorded in its policy.json) is accepted, so the flag only documents it (default: that profile)",
    )
    add_arm_flags(p)


def add_arm_flags(p: argparse.ArgumentParser) -> None:
    """An external policy server as the evaluated policy, instead of --checkpoint."""
    from .inference.arm import CONVENTIONS, FIELD_HELP

    p.add_argument(
        "--arm",
        default=None,
        metavar="NAME=ws://HOST:PORT",
        help="evaluate an external policy server speaking openpi's LIBERO example protocol instead of a checkpoint; "
        "NAME names it in the results (with its conventions, its identity); every convention must be stated by "
        "--arm_convention, --arm_spec or --arm_set (default: none)",
    )
    p.add_argument(
        "--arm_convention",
        default=None,
        choices=tuple(CONVENTIONS),
        help="a named set of conventions: openpi-libero is openpi's LIBERO example client ("
        + ", ".join(f"{k} {v}" for k, v in CONVENTIONS["openpi-libero"].items())
        + "); chunk_size is the served model's and still has to be stated (default: none)",
    )
    p.add_argument(
        "--arm_spec",
        default=None,
        metavar="FILE",
        help="JSON file of the arm's conventions (an object of FIELD: VALUE), replacing --arm_convention's where "
        "both state a field (default: none)",
    )
    p.add_argument(
        "--arm_set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="one convention, replacing --arm_spec's and --arm_convention's; repeatable. Fields: "
        + "; ".join(f"{k}: {v}" for k, v in FIELD_HELP.items()),
    )
    p.add_argument(
        "--arm_timeout",
        type=float,
        default=120.0,
        help="seconds the arm's server may take to answer one request before the episode ends as an error "
        "(retried once) (default: 120)",
    )
    p.add_argument(
        "--train_starts",
        default=None,
        metavar="PATH",
        help="the arm's training data, whose starts evaluation must not start from: a dataset folder, or a "
        "start-states file (JSON lines with suite, task_id, sim_state, as meta/start_states.jsonl) (default: none, "
        "held-out starts not checked, and said so)",
    )


def arm_settings(args) -> dict:
    """The EvalSettings fields of --arm and its flags; ConfigError naming what is missing or wrong."""
    given = [f for f in ("arm_convention", "arm_spec", "train_starts") if getattr(args, f, None) is not None]
    given += ["arm_set"] if getattr(args, "arm_set", None) else []
    if getattr(args, "arm", None) is None:
        if given:
            raise ConfigError(f"--{given[0]} describes an external arm; name it with --arm NAME=ws://HOST:PORT.")
        return {}
    from .inference.arm import ArmSpecError, build_spec, parse_arm

    try:
        name, address = parse_arm(args.arm)
        spec = build_spec(name, args.arm_convention, args.arm_spec, args.arm_set)
    except ArmSpecError as e:
        raise ConfigError(
            f"{e} State the arm's conventions with --arm_spec FILE (JSON), --arm_set FIELD=VALUE, or "
            "--arm_convention openpi-libero for openpi's LIBERO example's."
        ) from None
    return {
        "arm": spec.to_dict(),
        "arm_address": address,
        "arm_timeout_s": args.arm_timeout,
        "train_starts": args.train_starts,
    }


def settings_from_args(args):
    from .evaluate.closed_loop import EvalSettings

    try:
        i, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n with 0 <= i < n (e.g. 0/4), got {args.shard!r}.") from None
    return EvalSettings(
        checkpoint=args.checkpoint,
        suite=args.suite,
        tasks=tuple(parse_ids(args.tasks)) if args.tasks else None,
        n_episodes=args.n_episodes,
        init_states=None
        if args.init_states is None
        else tuple(parse_ids(args.init_states, "--init_states", "initial states")),
        memory=args.memory,
        replan_every=args.replan_every,
        temporal_ensemble=args.temporal_ensemble,
        workers=args.workers,
        seed=args.seed,
        video=args.video,
        shard=(i, n),
        out=args.out,
        max_steps=args.max_steps,
        device=args.device,
        episode_timeout_s=args.episode_timeout or None,
        allow_train_overlap=args.allow_train_overlap,
        policy_server=args.policy_server,
        render_profile=args.render_profile,
        **arm_settings(args),
    )


def run(args) -> int:
    from .evaluate.closed_loop import evaluate
    from .sim.gl import check_gl_environment

    check_gl_environment()  # a renderer the simulator cannot use is named before any worker starts
    result = evaluate(settings_from_args(args))
    print(format_run(result))
    return 1 if result.errors else 0


def format_run(result) -> str:
    """The console summary of exactly the episodes asked for: rates over finished episodes, errors apart,
    the overlap check, and a last line that says whether the run is complete."""
    from .analysis.stats import summarize_episodes
    from .evaluate.overlap import describe

    lines = [describe(result.overlap)]
    if result.finished:
        lines.append(format_summary(summarize_episodes(result.finished)))
    flagged = sum(1 for r in result.finished if r.get("train_overlap"))
    if flagged:
        lines.append(f"WARNING: {flagged} episode(s) started from training start states (train_overlap).")
    if result.errors:
        shown = "; ".join(f"task {r['task_id']} init {r['init_index']}: {r.get('error')}" for r in result.errors[:3])
        lines.append(
            f"ERROR: {len(result.errors)} episode(s) ended in an error, not counted in any rate ({shown}"
            f"{' ...' if len(result.errors) > 3 else ''}); run the same command again to retry them."
        )
    else:
        lines.append(f"{len(result.finished)} episode(s) finished, 0 errors: {result.path}")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    lines = []
    for suite, s in summary["per_suite"].items():
        lo, hi = s["ci"]
        lines.append(f"{suite}: {s['k']}/{s['n']} = {100 * s['rate']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f})")
    for (suite, task_id), s in sorted(summary["per_task"].items()):
        lo, hi = s["ci"]
        lines.append(
            f"  task {task_id:2d}: {s['k']}/{s['n']} = {100 * s['rate']:.1f}% "
            f"({100 * lo:.1f}-{100 * hi:.1f})  {s.get('task', '')}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="world_modality.eval_libero", description=__doc__)
    add_eval_flags(p)
    return run_reporting_errors(p.prog, run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
