"""Where checkpoints live and how their files are written and read: a run's complete checkpoints and the newest
one, a folder written under a temporary name and renamed, and the checked readers of its JSON and safetensors."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

FORMAT = "world-modality-checkpoint/1"
DONE_MARKER = "COMPLETE"
EMA_FILE = "ema.safetensors"  # the exponential moving average of the trainable weights, when training kept one


class CheckpointError(ValueError):
    """A checkpoint is incomplete, corrupt or does not match the policy it is loaded into."""


def is_complete(path: str | Path) -> bool:
    return (Path(path) / DONE_MARKER).exists()


def checkpoints_in(run_dir: str | Path) -> list[Path]:
    """A run folder's complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir() and is_complete(p)), key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its newest complete checkpoint)."""
    p = Path(path)
    if (p / "policy.json").exists():
        return p
    found = checkpoints_in(p)
    if not found:
        raise FileNotFoundError(
            f"{p} is neither a checkpoint folder nor a run folder with complete checkpoints under {p / 'checkpoints'}."
        )
    return found[-1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_tag() -> str:
    # The host is part of a writer's temporary folder name: a process id means nothing on another
    # machine sharing the run folder (a requeued job on another node, another container).
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def remove_partial_checkpoints(folder: str | Path) -> list[Path]:
    """Delete temporary folders left by writers on this machine that were killed mid-write (their
    process is gone); they are never loaded, only wasted space. A live writer's folder, and any
    folder written from another machine, is left alone."""
    host = writer_tag().rsplit("-", 1)[0]
    removed = []
    for tmp in Path(folder).glob(f".tmp-*-{host}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def temporary_folder(final: Path) -> Path:
    """An empty sibling folder to write `final` into before renaming it (dead writers' leftovers removed first)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(final.parent)
    tmp = final.parent / f".tmp-{final.name}-{writer_tag()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing, corrupt or truncated file is a CheckpointError naming it."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e}") from e


def read_header(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (no tensor is read);
    safetensors checks the header against the file's length."""
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e}") from e


def read_json(path: Path, what: str) -> Any:
    """A checkpoint's JSON file; one that cannot be read or parsed is a CheckpointError saying `what` it should hold."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); expected {what}.") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e}); expected {what}.") from None
