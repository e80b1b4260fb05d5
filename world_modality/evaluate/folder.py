"""One evaluation's folder: its episodes files, the identity that keeps evaluations apart (checkpoint weights and
settings, or an external arm's name and conventions; suite, memory, seed, limits), and the lock that keeps two
writers out."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..jsonl import read_jsonl

if TYPE_CHECKING:
    from .eval_settings import EvalSettings


def episodes_path(out: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return out / ("episodes.jsonl" if n == 1 else f"episodes.shard-{i}-of-{n}.jsonl")


def read_episodes(path: Path) -> list[dict]:
    """Every complete line; a line cut by a kill mid-write is ignored (its episode reruns)."""
    return read_jsonl(path)[0]


def eval_identity(ckpt: Path, settings: EvalSettings, replan: int, limit: int) -> dict:
    """Everything that changes an episode's outcome (not the device, workers, tasks or episode count).
    The checkpoint's settings are in it: config.json (locations aside: a moved dataset or model keeps it) and
    what policy.json tells the runner about the data (frame sizes, control steps per frame, gripper); a
    config.json edited in place after an evaluation once reran into its folder and was reported with the old
    episodes. The training starts are left out: they decide which starts may run, not how one ends. A temporal
    ensemble is in it only when set, so folders evaluated before the option existed keep their identity."""
    from ..policy.checkpoint_store import json_sha256, settings_sha256, weights_sha256

    meta = json.loads((ckpt / "policy.json").read_text())
    info = {k: v for k, v in (meta.get("data_info") or {}).items() if k != "training_starts"}
    identity = {
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_step": meta.get("step"),
        "weights_sha256": weights_sha256(ckpt),
        **_ema_identity(ckpt),
        "config_sha256": settings_sha256(ckpt / "config.json")[:16],
        "data_info_sha256": json_sha256(info)[:16],
        "suite": settings.suite,
        "memory": settings.memory,
        "seed": settings.seed,
        "step_limit": limit,
        "render_profile": settings.render_profile,
        "replan_every": replan,
        "allow_train_overlap": settings.allow_train_overlap,
    }
    ensemble = getattr(settings, "temporal_ensemble", None)  # a stand-in for EvalSettings without the field: off
    if ensemble is not None:
        identity["temporal_ensemble"] = ensemble
    return identity


ARM_MEMORY = "external"  # an external arm's records' `memory`: it has none of this project's modes


def arm_identity(spec: dict, settings: EvalSettings, limit: int) -> dict:
    """An external arm's evaluation identity: its name and every stated convention (each one `arm_<field>`, so a
    refusal names the field that differs; replanning and render settings under the keys a checkpoint's use), and
    the protocol. Where its server runs is not in it: the same arm may be served from anywhere."""
    identity = {
        "arm": spec["name"],
        **{f"arm_{k}": v for k, v in spec.items() if k not in ("name", "replan_every", "render_profile")},
        "suite": settings.suite,
        "memory": ARM_MEMORY,
        "seed": settings.seed,
        "step_limit": limit,
        "render_profile": spec["render_profile"],
        "replan_every": spec["replan_every"],
        "allow_train_overlap": settings.allow_train_overlap,
    }
    if settings.temporal_ensemble is not None:
        identity["temporal_ensemble"] = settings.temporal_ensemble
    return identity


def _ema_identity(ckpt: Path) -> dict:
    """The EMA weights, which evaluation loads when a checkpoint keeps them; absent before EMA existed, so
    identities of evaluations of checkpoints without EMA stay as they were."""
    ema = ckpt / "ema.safetensors"
    from ..policy.checkpoint_store import file_sha256

    return {"ema_sha256": file_sha256(ema)[:16]} if ema.exists() else {}


def check_same_evaluation(out: Path, identity: dict, path: Path) -> None:
    from ..config import ConfigError

    settings_file = out / "settings.json"
    old = None
    if settings_file.exists():
        try:
            old = json.loads(settings_file.read_text()).get("identity")
        except (json.JSONDecodeError, AttributeError):
            raise ConfigError(
                f"{settings_file} is not valid JSON; expected the settings of the evaluation in {out}. "
                "Delete the folder or use another --out."
            ) from None
    has_episodes = any(read_episodes(p) for p in out.glob("episodes*.jsonl"))
    if old is None and has_episodes:
        raise ConfigError(
            f"{out} holds episodes of an evaluation that recorded no settings to compare with; "
            "use another --out or delete that folder."
        )
    if old is not None and old != identity:
        keys = [*identity, *(k for k in old if k not in identity)]  # an EMA file deleted since: absent now
        diff = "; ".join(
            f"{k}: {_recorded(old, k)} there, {_recorded(identity, k)} now"
            for k in keys
            if old.get(k) != identity.get(k)
        )
        raise ConfigError(
            f"{out} holds episodes of another evaluation ({diff}); its outcomes would be mixed with "
            "these. Use another --out, or delete that folder to start over."
        )


def _recorded(identity: dict, key: str) -> str:
    # Absent from a folder written before the key joined the identity: whether its episodes agree on it cannot be
    # told, so the folder is refused like any other.
    return repr(identity[key]) if key in identity else "not recorded"


def lock_folder(out: Path):
    from ..config import ConfigError

    f = (out / ".lock").open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError(
            f"another evaluation is writing to {out} right now; wait for it to finish, or use another --out."
        ) from None
    return f
