"""A study run's training in N processes (`--train-processes N`): `torchrun --standalone` starts N copies of this
module's entry on one machine, each training the run's saved config with Accelerate (one GPU each, or gloo on the
CPU); their console goes to the run's train.log, and a rerun resumes from the run's newest checkpoint."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

CONFIG_FILE = "launch_config.json"  # the run's config as the processes read it, beside the config.json train writes
PROG = "world_modality.study.launch"


class TrainingProcessesFailed(RuntimeError):
    """The processes of one run's training exited with an error; a rerun of the study resumes the run."""


def launch_settings(args) -> dict:
    """--train-processes, --train-threads and --serve, checked: {"train_processes": n, "train_threads": t,
    "serve": bool} for StudySettings."""
    from ..config import ConfigError

    n = getattr(args, "train_processes", 1)
    if n is None or n < 1:
        raise ConfigError(f"--train-processes must be >= 1 (1: train in the study's process), got {n}.")
    if n > 1:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and n > gpus:
            raise ConfigError(
                f"--train-processes {n}: this machine has {gpus} CUDA device(s) and each process trains on one of "
                f"its own; expected at most {gpus}."
            )
    threads = getattr(args, "train_threads", 0)
    if threads is None or threads < 0:
        raise ConfigError(f"--train-threads must be >= 0 (0: half the cores), got {threads}.")
    return {"train_processes": n, "train_threads": threads, "serve": bool(getattr(args, "serve", False))}


def torchrun_command(config: Path, processes: int) -> list[str]:
    """torchrun of this interpreter; --standalone picks a free rendezvous port, so two studies on one machine
    never meet in one process group."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        PROG,
        str(config),
    ]


def train_in_processes(cfg, processes: int, log: Path) -> Path:
    """Train (or resume, or find finished) the run of `cfg` in `processes` processes; its final checkpoint. The
    launcher and its workers are stopped when this returns or raises, an interrupt included."""
    from ..policy.checkpoint_store import checkpoints_in
    from .children import start, stop

    run = Path(cfg.train.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    config = run / CONFIG_FILE
    cfg.to_json(config)
    cmd = torchrun_command(config, processes)
    with log.open("a") as f:
        f.write(f"[study] training in {processes} processes: {shlex.join(cmd)}\n")
        f.flush()
        begun = f.tell()
        proc = start(cmd, stdout=f, stderr=f)
        try:
            status = proc.wait()
        finally:
            stop(proc)  # nothing to do unless the wait was interrupted
    if status != 0:
        raise TrainingProcessesFailed(
            f"training in {processes} processes (torchrun) exited with status {status}: {_reason(log, begun)}; "
            f"the console is in {log}"
        )
    return checkpoints_in(run)[-1]


def _reason(log: Path, begun: int) -> str:
    """The error a training process printed (each prints the same), else the launch's last line."""
    with log.open("rb") as f:
        f.seek(begun)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith(f"{PROG}: error:")]
    return said[0] if said else (lines[-1] if lines else "it printed nothing")


def main(argv: list[str] | None = None) -> int:
    """One training process: `python -m world_modality.study.launch CONFIG_JSON`, started by torchrun."""
    from ..config import ConfigError, ExperimentConfig
    from ..errors import run_reporting_errors
    from ..train import train

    args = sys.argv[1:] if argv is None else argv

    def run() -> int:
        if len(args) != 1:
            raise ConfigError(f"{PROG} takes one argument, a run's saved config.json; got {args}.")
        final = train(ExperimentConfig.from_json(args[0]), progress=False)
        if os.environ.get("RANK", "0") == "0":  # every process ends at the same checkpoint
            print(f"[train] final checkpoint: {final}")
        return 0

    return run_reporting_errors(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
