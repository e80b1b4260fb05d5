"""`world-modality` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import (
    cmd_demo,
    cmd_encode,
    cmd_eval_offline,
    cmd_generate,
    cmd_pretrain_world,
    cmd_probe,
    cmd_report,
    cmd_study,
    cmd_train,
)
from .config import MEMORY_MODES, add_config_flags
from .errors import run_reporting_errors
from .sim.suites import STANDARD_SUITES

# Commands that start the simulator: its renderer setting is checked before anything else runs.
SIMULATOR_COMMANDS = ("generate", "eval", "study", "demo")
DEVICE_HELP = "where the policy runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default: 'auto')"


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .demo import FULL, QUICK

    parser = argparse.ArgumentParser(prog="world-modality", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help=f"train a policy (presets {', '.join(PRESETS)})")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("encode", help="encode a dataset's frames into cached world latents")
    add_config_flags(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("eval-offline", help="held-out action MSE, memory ablations, world error vs copy-last")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--dataset", default=None, help="dataset root folder (default: the one the policy trained on)")
    p.add_argument(
        "--memory",
        nargs="+",
        default=list(MEMORY_MODES),
        choices=MEMORY_MODES,
        help=f"memory ablations to score, one or more of {', '.join(MEMORY_MODES)} (default: all)",
    )
    p.add_argument(
        "--split",
        default="val",
        choices=("val", "train"),
        help="episodes to score: val (held out from training) or train (default: 'val')",
    )
    p.add_argument("--batch_size", type=int, default=32, help="samples per forward pass, >= 1 (default: 32)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the random and shuffle ablations and of flow sampling (default: 0)",
    )
    p.add_argument("--out", default=None, help="JSON file to write (default: <run>/eval_offline_<split>.json)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_eval_offline)

    p = sub.add_parser("generate", help="scripted-expert demonstrations in LIBERO, written as a LeRobot dataset")
    p.add_argument(
        "--suite",
        default="libero_spatial",
        help=f"LIBERO suite to record in, one of {', '.join(STANDARD_SUITES)} (default: 'libero_spatial')",
    )
    p.add_argument("--tasks", default="0,1", help="task ids of the suite: '0,1,4', '0-9' or '0-2,5' (default: '0,1')")
    p.add_argument(
        "--episodes-per-task",
        dest="episodes_per_task",
        type=int,
        default=10,
        help="successful demonstrations recorded per task, >= 1 (default: 10)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="dataset root folder to write (a new or empty folder, or a "
        "dataset this command wrote, which it completes)",
    )
    p.add_argument(
        "--image-size",
        dest="image_size",
        type=int,
        default=128,
        help="side in pixels of the square camera frames recorded (default: 128)",
    )
    p.add_argument("--workers", type=int, default=2, help="simulator processes, >= 1 (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the objects' fresh placements (default: 0)")
    from .sim.render_profile import DEFAULT_GENERATED, PROFILES

    p.add_argument(
        "--render-profile",
        dest="render_profile",
        choices=tuple(PROFILES),
        default=DEFAULT_GENERATED,
        help="camera settings of the frames, recorded in meta/info.json and used by every evaluation of a policy "
        "trained on them: 'libero' (LIBERO's: 4x MSAA, shadows), 'fast' (both off) or 'lean' (fast, with meshes of "
        f"over 8000 vertices drawn from fewer faces; rendering only) (default: {DEFAULT_GENERATED!r})",
    )
    p.add_argument(
        "--job-timeout",
        dest="job_timeout",
        type=float,
        default=900,
        help="seconds one episode may take before its worker is killed and the episode retried once, "
        "then skipped as failed (0: no limit; default: 900)",
    )
    p.set_defaults(func=cmd_generate)

    from .eval_libero import add_eval_flags
    from .eval_libero import run as run_eval

    p = sub.add_parser("eval", help="closed-loop evaluation in LIBERO (the benchmark's initial states)")
    add_eval_flags(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("report", help="markdown + HTML report: curves, success with intervals, ablations, paired test")
    p.add_argument("run_dirs", nargs="+", help="training run folders (with their eval/ results), one or more")
    p.add_argument(
        "--out", default="runs/report", help="folder for report.md, report.html and the PNGs (default: 'runs/report')"
    )
    p.add_argument(
        "--compare",
        nargs=2,
        default=None,
        metavar=("A", "B"),
        help="two experiments (preset names) to pair, B - A (default: E0 E2)",
    )
    p.set_defaults(func=cmd_report)

    from .world.pretrain import PretrainSettings

    d = PretrainSettings(dataset="")
    p = sub.add_parser(
        "pretrain-world",
        help="self-supervised V-JEPA training of the tiny world encoder on a "
        "dataset's own frames (resumable); --out loads as --world_encoder vjepa2",
    )
    p.add_argument("--dataset", required=True, help="root folder of a LeRobot v3-layout dataset")
    p.add_argument("--out", required=True, help="folder for the encoder (HF model folder), checkpoints and losses")
    for name, what in (
        ("steps", "optimiser steps in all (a rerun with more continues)"),
        ("batch_size", "windows per optimiser step"),
        ("lr", "AdamW learning rate after warm-up"),
        ("weight_decay", "AdamW weight decay"),
        ("warmup_steps", "optimiser steps of linear learning-rate warm-up"),
        ("ema", "momentum of the EMA target encoder, in [0, 1)"),
        ("seed", "random seed of the init and of every step's draws"),
        ("save_every", "optimiser steps between checkpoints"),
        ("num_threads", "CPU threads for torch; 0 = half the cores"),
        ("image_size", "side in pixels the frames are read at: the --image_size training will use"),
        ("world_image_size", "the encoder's input side in pixels (its crop)"),
        ("latent_suffix", "frames per window, written m<m> ('m4')"),
        ("frame_stride", "dataset frames between a window's frames"),
        ("world_image_key", "camera column the world encoder watches"),
        ("val_fraction", "share of episodes held out, in (0, 1), as training holds them out"),
        ("instruction_key", "instruction column (the split is per task)"),
        ("episode_id_key", "column naming each frame's episode"),
    ):
        default = getattr(d, name)
        p.add_argument(f"--{name}", type=type(default), default=default, help=f"{what} (default: {default!r})")
    p.set_defaults(func=cmd_pretrain_world)

    p = sub.add_parser("probe", help="ridge probes from world latents (and a run's Prophet) to object positions")
    add_config_flags(p)
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a trained run (or checkpoint): probe its encoder and Prophet (only --dataset and --seed may "
        "be given beside it)",
    )
    p.add_argument("--out", default=None, help="JSON file to write (default with --checkpoint: <run>/probe.json)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("demo", help="`make demo`: the main job on the embedded default (CPU, no downloads)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smaller budget, to try it out: {QUICK.episodes_per_task} demonstrations and "
        f"{QUICK.eval_episodes} closed-loop episodes per task, {QUICK.max_epochs} epochs (full: "
        f"{FULL.episodes_per_task}, {FULL.eval_episodes}, {FULL.max_epochs})",
    )
    p.add_argument(
        "--out", default="runs/demo", help="folder for the demonstrations, runs and report (default: 'runs/demo')"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "study",
        help="the benchmark's table: demonstrations, E0/E2 runs per seed, every suite and "
        "LIBERO-PRO perturbation evaluated, paired statistics (resumable)",
    )
    p.add_argument(
        "--suites",
        default="libero_spatial,libero_object,libero_goal,libero_10",
        help="suites, comma-separated, of libero_spatial, libero_object, libero_goal, libero_10 (default: all four)",
    )
    p.add_argument(
        "--experiments",
        default="E0,E2",
        help="presets to train, comma-separated, e.g. E0,E2,E2-Present,E2-State; contrasts E2 - E0 (primary), "
        "E2 - E2-Present, E2-Present - E0 and E2-State - E0 when their arms run, other arms against E0 or the first; "
        "'' for none, only with --arm (a study of external arms) (default: 'E0,E2')",
    )
    p.add_argument("--seeds", default="0", help="training seeds: '0,1,2' or '0-2' (default: '0')")
    p.add_argument(
        "--pro",
        default="",
        help="LIBERO-PRO perturbations evaluated on each suite, comma-separated, "
        "of swap, object, lan, task (default: none)",
    )
    p.add_argument("--tasks", default=None, help="task ids of every suite: '0,1' or '0-9' (default: all)")
    p.add_argument(
        "--budget",
        default="cpu",
        choices=("cpu", "gpu"),
        help="sizes: cpu is the CPU recipe (128 px, tiny backbone, 12 epochs with a cosine learning rate, "
        "30 demonstrations per task; ~32 min of training per run on 2 cores); "
        "gpu the real sizes (Qwen2.5-VL-3B frozen with LoRA, the frozen V-JEPA 2 ViT-L under --world-encoder "
        "vjepa2, bfloat16, 224 px, 20 epochs, 50 demonstrations per task), refused unless their weights are on "
        "disk; the flags below override it (default: 'cpu')",
    )
    for flag, what in (
        ("demos-per-task", "demonstrations per task, >= 1: the scripted expert's, or the first of each in --dataset"),
        ("epochs", "training epochs per run, >= 1"),
        ("batch-size", "training samples per step"),
        ("image-size", "side in pixels of the recorded frames and the policy's images"),
        ("world-image-size", "world-encoder input side in pixels"),
        ("workers", "simulator processes for generation and evaluation, >= 1"),
    ):
        dest = "epochs" if flag == "epochs" else flag.replace("-", "_")
        p.add_argument(f"--{flag}", dest=dest, type=int, default=None, help=f"{what} (default: the budget's)")
    p.add_argument(
        "--lr-schedule",
        dest="lr_schedule",
        choices=("constant", "cosine"),
        default=None,
        help="each run's learning rate after warmup: constant, or cosine decay to 0 (default: the budget's)",
    )
    from .config import BACKBONE_DTYPES, BACKBONES, WORLD_ENCODER_DTYPES

    for flag, choices, what in (
        ("backbone", BACKBONES, "the VLM backbone of every run; a real one trains frozen with LoRA adapters"),
        ("backbone-path", None, "local folder or hub-cache id already on disk of a real backbone's weights"),
        ("backbone-dtype", BACKBONE_DTYPES, "dtype of the backbone's weights"),
        ("world-encoder-path", None, "local folder or hub-cache id already on disk of --world-encoder vjepa2"),
        ("world-encoder-dtype", WORLD_ENCODER_DTYPES, "dtype of the V-JEPA 2 (auto: bfloat16 on CUDA, else float32)"),
    ):
        dest = flag.replace("-", "_")
        meta = {"choices": choices} if choices else {"metavar": "DIR_OR_HUB_ID"}
        spellings = dict.fromkeys((f"--{flag}", f"--{dest}"))  # train's underscore spelling too, once
        p.add_argument(*spellings, dest=dest, default=None, **meta, help=f"{what} (default: the budget's)")
    p.add_argument(
        "--dataset",
        default=None,
        metavar="DIR_OR_HUB_ID",
        help="train on this LeRobot LIBERO dataset (e.g. a local copy of HuggingFaceVLA/libero, or its hub-cache id "
        "already on disk) instead of generating demonstrations: each suite's tasks found by their instruction, the "
        "first --demos-per-task episodes of each (default: generate them with the scripted expert)",
    )
    p.add_argument(
        "--episodes-per-task",
        dest="episodes_per_task",
        type=int,
        default=None,
        help="initial states per task on each standard suite (default: all 50, the public protocol)",
    )
    p.add_argument(
        "--init-states",
        dest="init_states",
        default=None,
        help="which stored initial states of each task to run on each standard suite, e.g. '10-49' (the states a "
        "recipe was not tuned on); instead of --episodes-per-task",
    )
    p.add_argument(
        "--pro-episodes",
        dest="pro_episodes",
        type=int,
        default=None,
        help="initial states per task on each LIBERO-PRO suite (default: all)",
    )
    p.add_argument(
        "--max-steps",
        dest="max_steps",
        type=int,
        default=None,
        help="control steps per episode, >= 1 (default: each suite's public limit)",
    )
    p.add_argument(
        "--out", default="runs/study", help="folder for the runs, report.md and study.json (default: 'runs/study')"
    )
    p.add_argument(
        "--data", default=None, help="folder of the generated datasets, reusable by other studies (default: <out>/data)"
    )
    p.add_argument(
        "--joint",
        action="store_true",
        help="train one policy per experiment and seed over all the suites' demonstrations (default: one per suite)",
    )
    p.add_argument(
        "--train-processes",
        dest="train_processes",
        type=int,
        default=1,
        metavar="N",
        help="processes that train each run, >= 1, started by torchrun on this machine (one GPU each, or gloo on the "
        "CPU); each takes --batch-size samples per step, so an update averages batch-size x N samples and an epoch "
        "has N times fewer updates: a study of its own when not 1 (default: 1, in the study's process)",
    )
    p.add_argument(
        "--train-threads",
        dest="train_threads",
        type=int,
        default=0,
        metavar="N",
        help="torch CPU threads in each training process, >= 0; changes float rounding only, so not part of the "
        "study's identity, and a run resumes under another count (default: 0, half the cores)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="evaluate each run through one batched `world-modality serve` of its checkpoint on a free loopback port, "
        "which the --workers simulators ask for chunks, started before the run's first evaluation and stopped after "
        "its last; not part of the study's identity: requests stacked into one batch (deterministic policies, "
        "--workers > 1) agree with a local policy to float rounding, not bit for bit, so a borderline episode can end "
        "otherwise (each run's serve.log counts them) (default: each worker loads the policy)",
    )
    from .study.external_arms import add_flags as add_external_arm_flags

    add_external_arm_flags(p)  # --arm NAME=ws://HOST:PORT and its conventions
    p.add_argument(
        "--world-encoder",
        dest="world_encoder",
        default=None,
        choices=("pretrained", "random", "vjepa2"),
        help="the image world encoder of E2, E2-Present, E2-Flow and E4: 'pretrained' the tiny encoder pretrained by "
        "pretrain-world on the study's own demonstrations, once per training dataset, a stage of its own "
        "(E2-Pretrained always uses it); 'random' the tiny encoder's fixed random init; 'vjepa2' the real frozen "
        "V-JEPA 2 at --world-encoder-path (default: the budget's, cpu 'pretrained', gpu 'vjepa2')",
    )
    for flag, what in (
        ("pretrain-steps", "pretrain-world optimiser steps (default: the budget's, cpu 2000, gpu 5000)"),
        ("pretrain-batch-size", "pretrain-world windows per step (default: the budget's, cpu 32, gpu 64)"),
        ("pretrain-seed", "pretrain-world seed of its init and draws (default: 0)"),
    ):
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=int, default=None, help=what)
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only the I-th of N disjoint parts of the study, counted from 1 (1/N to N/N): whole runs (training "
        "and every evaluation of it), the sorted (suite, experiment, seed) runs dealt round-robin; each shard's "
        "--out holds its results, and `world-modality study merge` makes the report (default: the whole study)",
    )
    p.set_defaults(func=cmd_study)
    _add_study_merge(p)

    from .serve.command import add_serve_flags
    from .serve.command import run as run_serve

    p = sub.add_parser(
        "serve",
        help="serve a policy over WebSocket in openpi's protocol (msgpack numpy arrays), "
        "batching requests that arrive together",
    )
    add_serve_flags(p)
    p.set_defaults(func=run_serve)
    return parser


def _add_study_merge(study: argparse.ArgumentParser) -> None:
    """`world-modality study merge DIR... --out DIR`, a subcommand of study."""
    from .study.merge import merge_command

    # Every study flag's default, taken before merge joins: a study flag given with merge is refused, not dropped.
    # parse_known_args, not parse_args: a tool that stands in for parse_args (the README check) sees only real parses.
    defaults = {k: v for k, v in vars(study.parse_known_args([])[0]).items() if k != "func"}
    sub = study.add_subparsers(
        dest="study_command", metavar="merge", help="merge: assemble shard folders into one report (study merge -h)"
    )
    p = sub.add_parser(
        "merge",
        help="one report.md and study.json from the folders of a study's shards (--shard); refuses shards of other "
        "settings or that ran the same episode, names the runs no shard holds",
    )
    p.add_argument("shards", nargs="+", metavar="DIR", help="the --out folders of the shards (copies or moved ones do)")
    p.add_argument("--out", dest="merge_out", required=True, metavar="DIR", help="folder for report.md and study.json")
    p.set_defaults(func=merge_command, study_defaults=defaults)


def run_command(args) -> int:
    if args.command in SIMULATOR_COMMANDS and getattr(args, "study_command", None) != "merge":
        from .sim.gl import check_gl_environment

        check_gl_environment()
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = " ".join(filter(None, ("world-modality", args.command, getattr(args, "study_command", None))))
    return run_reporting_errors(prog, run_command, args)


if __name__ == "__main__":
    sys.exit(main())
