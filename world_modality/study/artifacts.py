"""The hashes of the large artifacts a study folder used (<out>/artifacts.json): each dataset's fingerprint, each
pretrained world encoder's files' sha256 and each run's checkpoint weights' sha256, recorded at first use and checked
at every later one, so a dataset, encoder or checkpoint rebuilt or changed since is refused instead of mixed with
the results it did not produce."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError

ARTIFACTS_FILE = "artifacts.json"


class ArtifactMismatch(ConfigError):
    """A dataset or checkpoint whose hash differs from the one this folder's results were made with."""


def dataset_hash(root: Path) -> str:
    """The dataset fingerprint that keys every cache (data/fingerprint.py: sha256 of its content, not of the commit
    that wrote it, so shards at other commits agree)."""
    from ..data.fingerprint import dataset_fingerprint

    root = Path(root)
    return dataset_fingerprint(root, sorted((root / "data").glob("**/*.parquet")))


def dataset_toolchains(root: Path) -> list[dict]:
    """The toolchains (toolchain.py) a generated dataset's meta/info.json says wrote it; [] when it records none."""
    import json

    try:
        info = json.loads((Path(root) / "meta" / "info.json").read_text())
    except (OSError, ValueError):
        return []
    record = info.get("provenance") if isinstance(info, dict) else None
    found = record.get("toolchains") if isinstance(record, dict) else None
    return [t for t in found if isinstance(t, dict)] if isinstance(found, list) else []


def last_toolchain(toolchains) -> dict | None:
    """The toolchain that last wrote into a dataset, None when none is recorded."""
    return toolchains[-1] if isinstance(toolchains, list) and toolchains else None


# What makes a pretrain-world folder the encoder it is (weights, architecture, input processing); its training
# checkpoints and loss log are how it was made, not what the runs load.
ENCODER_FILES = ("model.safetensors", "config.json", "video_preprocessor_config.json")


def encoder_hashes(folder: Path) -> dict[str, str]:
    from ..policy.checkpoint_store import file_sha256

    return {name: file_sha256(Path(folder) / name) for name in ENCODER_FILES if (Path(folder) / name).exists()}


def _changed(found: dict[str, str], recorded: dict[str, str]) -> str:
    """Which files' sha256 differ, with their (shortened) hashes now and as recorded."""
    changed = sorted(k for k in set(found) | set(recorded) if found.get(k) != recorded.get(k))
    now = ", ".join(str(found.get(k, "absent"))[:16] for k in changed)
    then = ", ".join(str(recorded.get(k, "absent"))[:16] for k in changed)
    return f"sha256 of {', '.join(changed)} {now} now, {then} recorded"


def checkpoint_hashes(ckpt: Path) -> dict[str, str]:
    """sha256 of each weight file the checkpoint has (the weights, their moving average, the tokenizer)."""
    from ..policy.checkpoint_store import WEIGHT_FILES, file_sha256

    return {name: file_sha256(Path(ckpt) / name) for name in WEIGHT_FILES if (Path(ckpt) / name).exists()}


class Artifacts:
    """artifacts.json of one study folder: {"datasets": {suite: {"name", "fingerprint"}}, "world_encoders": {suite:
    {"name", "sha256": {file: hex}}}, "checkpoints": {run: {"checkpoint": path under the folder, "sha256": {file:
    hex}}}}."""

    def __init__(self, out: Path):
        from .shards import read_json

        self.out = Path(out)
        self.path = self.out / ARTIFACTS_FILE
        data = read_json(self.path, "the artifact hashes a study writes") if self.path.exists() else {}
        self.datasets: dict[str, dict] = dict(data.get("datasets") or {})
        self.encoders: dict[str, dict] = dict(data.get("world_encoders") or {})
        self.checkpoints: dict[str, dict] = dict(data.get("checkpoints") or {})

    def _write(self) -> None:
        from .shards import write_json

        encoders = {"world_encoders": self.encoders} if self.encoders else {}
        write_json(self.path, {"datasets": self.datasets, **encoders, "checkpoints": self.checkpoints})

    def check_dataset(self, suite: str, root: Path) -> str:
        """The dataset's fingerprint, recorded on first use with the software that generated it (toolchain.py);
        ArtifactMismatch when it differs from the recorded one, naming the versions that differ."""
        found = dataset_hash(root)
        old = self.datasets.get(suite)
        if old and old.get("fingerprint") != found:
            from ..toolchain import differences

            moved = differences(
                last_toolchain(dataset_toolchains(root)),
                last_toolchain(old.get("toolchains")),
                "this dataset",
                "the one they used",
            )
            raise ArtifactMismatch(
                f"dataset {root} has fingerprint {found}, but this folder's runs of {suite} used "
                f"{old.get('fingerprint')} (dataset {old.get('name')}, {self.path}): its results would be mixed with "
                f"another dataset's. The software that generated them: {'; '.join(moved) or 'the same versions'} "
                "(the same settings under another simulator version write other bytes; pyproject.toml pins them). "
                "Point --data at the dataset they used, install the recorded versions, or use another --out."
            )
        if not old:
            self.datasets[suite] = {
                "name": Path(root).name,
                "fingerprint": found,
                "toolchains": dataset_toolchains(root),
            }
            self._write()
        return found

    def check_encoder(self, suite: str, folder: Path) -> dict[str, str]:
        """The pretrained encoder's file hashes, recorded on first use; ArtifactMismatch when they differ (pretraining
        repeats bit for bit only on one machine with one thread count, so a rebuilt encoder may differ)."""
        found = encoder_hashes(folder)
        old = self.encoders.get(suite)
        if old and old.get("sha256") != found:
            raise ArtifactMismatch(
                f"world encoder {folder} of {suite} differs from the one this folder's runs of {suite} used "
                f"({old.get('name')}, {self.path}): {_changed(found, old['sha256'])}; its results would "
                "be mixed with another encoder's. Point --data at the folder holding the encoder they used, or use "
                "another --out."
            )
        if not old:
            self.encoders[suite] = {"name": Path(folder).name, "sha256": found}
            self._write()
        return found

    def check_checkpoint(self, run: str, ckpt: Path) -> dict[str, str]:
        """The final checkpoint's weight hashes, recorded on first use; ArtifactMismatch when they differ."""
        found = checkpoint_hashes(ckpt)
        old = self.checkpoints.get(run)
        try:
            where = str(Path(ckpt).resolve().relative_to(self.out.resolve()))
        except ValueError:
            where = str(ckpt)
        if old and old.get("sha256") != found:
            raise ArtifactMismatch(
                f"checkpoint {ckpt} of run {run} differs from the one this folder's evaluations of it ran "
                f"({old.get('checkpoint')}, {self.path}): {_changed(found, old['sha256'])}. Restore that "
                "checkpoint, or delete the run's folder and its entry in artifacts.json to train and evaluate it anew."
            )
        if not old:
            self.checkpoints[run] = {"checkpoint": where, "sha256": found}
            self._write()
        return found
