"""Where checkpoints live and how their files are written and read: a run's complete checkpoints and the newest
one, a folder written under a temporary name and renamed, the checked readers of its JSON and safetensors, and
the sha256 of its files recorded at save and verified at load."""

from __future__ import annotations

import hashlib
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
# policy.json's record at save: {file name: 64 hex digits}, of the weight files' bytes and config.json's settings.
CHECKSUMS = "sha256"
# Where things live, not what they are: a dataset or model moved to another disk is pointed at anew by editing these
# in a checkpoint's config.json, so they stay out of its hash. What is found there is checked on its own: the
# frozen backbone's fingerprint, the world encoder's id, the latent caches' dataset fingerprint.
LOCATION_FIELDS = (
    ("data", "dataset"),
    ("data", "coc_jsonl"),
    ("policy", "backbone_path"),
    ("world", "world_encoder_path"),
    ("world", "latent_cache_dir"),
    ("train", "output_dir"),
)
WEIGHT_FILES = ("model.safetensors", EMA_FILE, "tokenizer.json")


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(ckpt: Path) -> str:
    """The checkpoint's weights' hash (16 hex digits): an evaluation's identity and a policy server's metadata name
    it, so an evaluation against a server of other weights is refused."""
    return file_sha256(Path(ckpt) / "model.safetensors")[:16]


def json_sha256(value) -> str:
    """sha256 of a JSON value as settings: keys sorted, no whitespace, so re-indenting a file keeps it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def settings_sha256(config_path: Path) -> str:
    """sha256 of a checkpoint's config.json as settings: every value but the locations (LOCATION_FIELDS), keys
    sorted, so that re-indenting the file or pointing it at a moved dataset keeps the hash. Hashed from the file,
    not from the parsed config: a field a later version adds (with its default) must not change it."""
    data = read_json(Path(config_path), "the experiment config a checkpoint was trained with")
    if isinstance(data, dict):
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for section, name in LOCATION_FIELDS:
            if isinstance(data.get(section), dict):
                data[section].pop(name, None)
    return json_sha256(data)


def meta_sha256(meta: dict) -> str:
    """sha256 of policy.json's own fields but its hash record: what the runner is told about the data (frame sizes,
    control steps per frame, the training starts the held-out check compares) changes outcomes as a setting does."""
    return json_sha256({k: v for k, v in meta.items() if k != CHECKSUMS})


def record_checksums(root: Path, meta: dict | None = None) -> dict[str, str]:
    """The hashes save records in policy.json: config.json's settings, policy.json's other fields (`meta`, when
    given) and every weight file present."""
    sums = {"config.json": settings_sha256(root / "config.json")}
    if meta is not None:
        sums["policy.json"] = meta_sha256(meta)
    sums.update({name: file_sha256(root / name) for name in WEIGHT_FILES if (root / name).is_file()})
    return sums


def recorded_checksums(root: Path, meta: dict) -> dict[str, str]:
    """policy.json's record; {} for a checkpoint saved before hashes were recorded (it loads as before)."""
    sums = meta.get(CHECKSUMS, {})
    if not (
        isinstance(sums, dict)
        and all(isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef") for v in sums.values())
    ):
        raise CheckpointError(
            f"{root / 'policy.json'}: {CHECKSUMS} is {sums!r}; expected an object of file names and the 64-hex sha256 "
            "each file had when the checkpoint was saved."
        )
    return sums


def verify_config(root: Path, meta: dict) -> None:
    """config.json as saved: an edited input setting (frame_stride, image_size, ...) with the weights unchanged
    once evaluated and scored with exit 0; the weights cannot tell most of these settings."""
    sums = recorded_checksums(root, meta)
    if "policy.json" in sums and meta_sha256(meta) != sums["policy.json"]:
        raise CheckpointError(
            f"checkpoint {root}: {root / 'policy.json'} does not match the sha256 it recorded when the checkpoint was "
            "saved (its data info, shapes or world encoder were edited since); restore the policy.json written with "
            "these weights."
        )
    want = sums.get("config.json")
    if want is not None and settings_sha256(root / "config.json") != want:
        raise CheckpointError(
            f"checkpoint {root}: {root / 'config.json'} does not match the sha256 recorded in policy.json when the "
            f"checkpoint was saved (a setting was edited since); restore the config.json written with these weights "
            f"(only the locations {', '.join('.'.join(f) for f in LOCATION_FIELDS)} may be changed)."
        )


def verify_weights(root: Path, meta: dict, names: tuple[str, ...] = WEIGHT_FILES) -> None:
    """The weight files as saved: two same-shape tensors swapped inside model.safetensors once loaded and
    acted. Hashing reads each file once more per load (about a second per GB); a checkpoint of a frozen
    pretrained backbone stores only its adapters and heads, so this is small next to building the model."""
    sums = recorded_checksums(root, meta)
    for name in names:
        if name not in sums:
            continue
        path = root / name
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {root}: {name} is missing, but policy.json records it as saved with the checkpoint; "
                f"restore the {name} written with these weights."
            )
        if file_sha256(path) != sums[name]:
            raise CheckpointError(
                f"checkpoint {root}: {name} does not match the sha256 recorded when it was saved (policy.json); it "
                f"was changed or replaced since. Restore the {name} written with this checkpoint, or use another "
                "checkpoint of the run."
            )
