"""A training run's folder: the output folder check, an earlier run moved aside, which config changes a resume
accepts, the run's config.json with the code's provenance beside the config, and the metrics log (JSONL +
TensorBoard) trimmed back to the step a resume restarts from.

The provenance (`provenance.py`) is no part of the config a resume compares: a later commit resumes the run and
is listed in config.json's "provenance" (its "continued_by"); each checkpoint's trainer_state.json names the
commit that wrote it."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from .config import ConfigError, ExperimentConfig, flatten
from .jsonl import parse_line
from .provenance import UNKNOWN, continued_with_toolchain

# Fields that may differ between the run being resumed and the resuming command.
RESUMABLE_CHANGES = {
    "max_epochs",
    "resume",
    "save_every_steps",
    "keep_checkpoints",
    "tensorboard",
    "dist_timeout_minutes",
    "num_workers",
    "num_threads",  # float rounding only
    "prefetch_factor",
    "val_loss",
}


def check_same_experiment(saved: ExperimentConfig, cfg: ExperimentConfig, where: Path) -> None:
    a, b = flatten(saved), flatten(cfg)
    diff = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES)
    if diff:
        details = ", ".join(f"{k}: saved {a[k]!r} vs now {b[k]!r}" for k in diff[:6])
        raise ConfigError(
            f"cannot resume {where}: the run was started with another config ({details}). "
            f"Use another --output_dir or --no-resume."
        )


def write_run_config(run_dir: Path, cfg: ExperimentConfig, code: dict, resumed: bool) -> dict:
    """Write the run's config.json: the config, and under "provenance" the commits and software stacks that trained
    it (`code` and this process's toolchain appended to a resumed run's; a resumed run whose config.json predates
    provenance began at an unknown commit). ExperimentConfig.from_json reads only the config sections, so the file
    still loads as a config. Returns the provenance written."""
    path = run_dir / "config.json"
    old = None
    if resumed:
        try:
            old = json.loads(path.read_text()).get("provenance") or {"commit": UNKNOWN, "dirty": None}
        except (OSError, ValueError, AttributeError):
            old = {"commit": UNKNOWN, "dirty": None}  # unreadable: the config itself came from the checkpoint
    record = continued_with_toolchain(old, code)
    path.write_text(json.dumps({**cfg.to_dict(), "provenance": record}, indent=2, sort_keys=True) + "\n")
    return record


def check_output_dir(run_dir: Path) -> None:
    """Refuse an output folder that cannot be one before any data is read or latent encoded: a file,
    a path through a file, or a place where nothing can be created."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"--output_dir {run_dir} is a file; expected a folder for the run (config, metrics, checkpoints)."
        )
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--output_dir {run_dir} cannot be created: {parent} is a file; expected a folder path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--output_dir {run_dir} cannot be written: {parent} is not writable.")


def move_aside(run_dir: Path) -> Path:
    """Move an earlier run's folder to <run>.old-<timestamp> (never overwriting one): a fresh run in the
    same folder would sort the old run's higher step numbers last, so rotation deleted the new checkpoints."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
        n += 1
    os.rename(run_dir, target)
    return target


def drop_metrics_after(path: Path, step: int) -> None:
    """A run killed between logging an epoch and checkpointing it logs that epoch again on resume:
    keep only the records the resumed checkpoint had reached."""
    if not path.exists():
        return
    text = path.read_text()
    lines = text.splitlines()
    kept = [line for line in lines if (record := parse_line(line)) is not None and record.get("step", 0) <= step]
    # Rewritten also when the last line lacks its newline, so the next record starts a line of its own.
    if len(kept) != len(lines) or not text.endswith("\n"):
        path.write_text("".join(line + "\n" for line in kept))


class MetricsLogger:
    """Console + JSONL + TensorBoard, only on the main process."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.jsonl = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    tag = f"val/{k[4:]}" if k.startswith("val_") else f"{record.get('kind', 'train')}/{k}"
                    self.tb.add_scalar(tag, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
