"""Encode each frame's m-frame window once and keep the latents in a strict, keyed on-disk cache.

A cache's file name is a hash of its identity (encoder, m, stride, camera, dataset, frame size, world tokens), so a
cache whose recorded identity disagrees with its name was edited, copied or renamed, and deleting it
is the fix. Other windows over the same frames (another episode key) get a cache of their own beside
it: neither is ever deleted to make room for the other.

The record (.json) holds the sha256 of the tensor file written with it, and the tensor file's own header its
identity: a tensor file replaced by another dataset's of the same frame count, or another window length's
latents under this one's name, is refused at load (it once trained and scored against the wrong latents)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from ..cache_dirs import locked, writable
from .latent_encoding import WindowEncoder
from .latent_encoding import encode_latents as encode_latents  # re-exported: callers import it with the cache

STD_FLOOR = 1e-6
CACHE_FORMAT = 2  # 2: frame_size joined the identity
# Fields whose mismatch makes a cache belong to another experiment: never reuse it silently.
# frame_size is the side the camera frames were read at (None: the dataset's own size). world_tokens (N spatial
# tokens per latent) is checked apart: caches written before it existed lack it and hold N = 1.
IDENTITY_FIELDS = ("encoder_id", "num_frames", "frame_stride", "image_key", "dataset_fingerprint", "frame_size")


class LatentCacheError(ValueError):
    """A cache file on disk cannot be read (truncated, corrupt, incomplete)."""


class LatentCacheMismatch(LatentCacheError):
    """A cache on disk was built for a different encoder, window, camera or dataset."""

    def __init__(self, path: str | os.PathLike, field_name: str, cached: Any, expected: Any, advice: str | None = None):
        self.path, self.field, self.cached, self.expected = str(path), field_name, cached, expected
        super().__init__(
            f"latent cache {self.path}: {field_name} is {cached!r} in the cache but {expected!r} "
            f"was expected; it is never reused: "
            + (advice or "load the cache built for this configuration (load_or_build_cache finds or builds it)")
        )


def _delete_advice(path: Path) -> str:
    """What to do about a cache found under the name of this identity that records another: the name is
    derived from the identity, so the file was edited, copied or renamed, and no run can use it."""
    stem = path.with_suffix("")
    return (
        f"its file name is derived from these fields, so the file was edited, copied or renamed; delete "
        f"{stem}.json and {stem}.safetensors and it is rebuilt"
    )


@dataclass
class LatentCache:
    latents: np.ndarray  # (N, D) float32, row i = latent of frame i's window
    mean: np.ndarray  # (D,) float32
    std: np.ndarray  # (D,) float32, floored at STD_FLOOR
    meta: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def n_frames(self) -> int:
        return int(self.latents.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.latents.shape[1])


def _past_rows_sha(past_rows: np.ndarray) -> str:
    rows = np.ascontiguousarray(np.asarray(past_rows, dtype=np.int64))
    h = hashlib.sha256(str(rows.shape).encode())
    h.update(rows.tobytes())
    return h.hexdigest()[:16]


def _nonfinite_rows(latents: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~np.isfinite(latents).all(axis=1))


def latent_stats(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and floored std (float64 accumulation, float32 result)."""
    z = np.asarray(latents, dtype=np.float64)
    mean = z.mean(axis=0)
    std = np.maximum(z.std(axis=0), STD_FLOOR)
    return mean.astype(np.float32), std.astype(np.float32)


def cache_key(
    encoder_id: str,
    num_frames: int,
    frame_stride: int,
    image_key: str,
    dataset_fingerprint: str,
    frame_size: int | None = None,
    world_tokens: int = 1,
) -> str:
    """Readable prefix + 16-hex hash of every identity field (the prefix alone is not unique)."""
    size = None if frame_size is None else int(frame_size)
    fields = [encoder_id, int(num_frames), int(frame_stride), image_key, dataset_fingerprint, size, CACHE_FORMAT]
    # N = 1 hashes as before world_tokens existed, so the caches already on disk keep their names.
    tokens = int(world_tokens)
    ident = json.dumps(fields + ([tokens] if tokens != 1 else []))
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    cam = image_key.rsplit(".", 1)[-1]
    shown = f"{encoder_id.split('-m')[0]}-m{num_frames}" + (f"-t{tokens}" if tokens != 1 else "")
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{shown}-st{frame_stride}-{cam}")
    return f"{prefix}-{digest}"


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_cache(path: str | os.PathLike, latents: np.ndarray, meta: dict) -> LatentCache:
    """Write <path>.safetensors then <path>.json; the JSON is written last so it marks completion. The tensor
    file's header carries the identity fields too, and the JSON the tensor file's sha256."""
    st_path, json_path = _paths(path)
    latents = np.ascontiguousarray(latents, dtype=np.float32)
    mean, std = latent_stats(latents)
    meta = {**meta, "n_frames": int(latents.shape[0]), "latent_dim": int(latents.shape[1])}
    meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("format", CACHE_FORMAT)
    tensors = {"latents": latents, "mean": mean, "std": std}
    header = {k: json.dumps(meta[k]) for k in (*IDENTITY_FIELDS, "world_tokens", "past_rows_sha") if k in meta}

    def write_tensors(tmp: str) -> None:
        save_file(tensors, tmp, metadata=header)
        meta["sha256"] = _file_sha256(tmp)

    _atomic_write(st_path, write_tensors)

    def write_json(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)

    _atomic_write(json_path, write_json)
    return LatentCache(latents, mean, std, meta, str(st_path.with_suffix("")))


def _expect(path: Path, meta: dict, name: str, expected: Any, advice: str | None = None) -> None:
    if name not in meta:
        raise LatentCacheMismatch(path, name, "<missing>", expected, advice)
    # JSON round trip so e.g. a tuple or numpy int compares equal to what JSON stored.
    if meta[name] != json.loads(json.dumps(expected)):
        raise LatentCacheMismatch(path, name, meta[name], expected, advice)


def _read_meta(json_path: Path) -> dict:
    """A cache's JSON record; one that is not a JSON object is named (the cache is rebuilt without it)."""
    stem = json_path.with_suffix("")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LatentCacheError(
            f"latent cache {json_path} is not valid JSON ({e}); delete {stem}.json and "
            f"{stem}.safetensors and it is rebuilt"
        ) from None
    if not isinstance(meta, dict):
        raise LatentCacheError(
            f"latent cache {json_path} holds a JSON {type(meta).__name__}, expected an object; "
            f"delete {stem}.json and {stem}.safetensors and it is rebuilt"
        )
    return meta


def load_cache(
    path: str | os.PathLike,
    *,
    encoder_id: str,
    num_frames: int,
    frame_stride: int,
    image_key: str,
    dataset_fingerprint: str,
    frame_size: int | None = None,
    world_tokens: int = 1,
    n_frames: int | None = None,
    latent_dim: int | None = None,
    past_rows_sha: str | None = None,
    keyed: bool = False,
) -> LatentCache:
    """Load a cache and verify every identity field, in its record and in its tensor file's header, and the
    tensor file against the sha256 its record holds; any mismatch raises LatentCacheMismatch. `keyed`:
    the path is the one cache_key derives from this identity (load_or_build_cache), so an identity field
    that disagrees means the file was edited, copied or renamed, and the error says to delete it. Caches
    written before the hash and header were recorded are checked on their record alone."""
    st_path, json_path = _paths(path)
    if not (st_path.exists() and json_path.exists()):
        raise FileNotFoundError(f"latent cache {st_path.with_suffix('')} is incomplete or absent")
    meta = _read_meta(json_path)
    expected = {
        "encoder_id": encoder_id,
        "num_frames": int(num_frames),
        "frame_stride": int(frame_stride),
        "image_key": image_key,
        "dataset_fingerprint": dataset_fingerprint,
        "frame_size": None if frame_size is None else int(frame_size),
    }
    if n_frames is not None:
        expected["n_frames"] = int(n_frames)
    if latent_dim is not None:
        expected["latent_dim"] = int(latent_dim)
    if past_rows_sha is not None:
        expected["past_rows_sha"] = past_rows_sha
    for name, value in expected.items():
        _expect(json_path, meta, name, value, _delete_advice(json_path) if keyed else None)
    if meta.get("world_tokens", 1) != int(world_tokens):  # absent: written before world_tokens, N = 1
        raise LatentCacheMismatch(
            json_path,
            "world_tokens",
            meta.get("world_tokens", 1),
            int(world_tokens),
            _delete_advice(json_path) if keyed else None,
        )
    tensors = _read_tensors(st_path, meta, {**expected, "world_tokens": int(world_tokens)})
    latents = tensors["latents"]
    shapes = {"latents": (meta.get("n_frames"), meta.get("latent_dim"))}
    shapes.update({"mean": shapes["latents"][1:], "std": shapes["latents"][1:]})
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise LatentCacheMismatch(st_path, f"{name}.shape", tensors[name].shape, shape, _delete_advice(st_path))
    bad = _nonfinite_rows(latents)
    if len(bad):
        stem = st_path.with_suffix("")
        raise LatentCacheError(
            f"latent cache {st_path} holds NaN/inf latents in {len(bad)} rows (first: row "
            f"{bad[0]}); delete {stem}.json and {stem}.safetensors and it is rebuilt (and checked)"
        )
    return LatentCache(latents, tensors["mean"], tensors["std"], meta, str(st_path.with_suffix("")))


def _read_tensors(st_path: Path, meta: dict, expected: dict) -> dict[str, np.ndarray]:
    """The tensor file, checked against its record: the identity in its header, then its sha256 (one more
    read of the file, about a second per GB, once per load)."""
    stem = st_path.with_suffix("")
    advice = f"it is not the tensor file its record {stem}.json was written with (copied over it since); delete "
    advice += f"{stem}.json and {stem}.safetensors and it is rebuilt"
    try:
        with safe_open(str(st_path), framework="numpy") as f:
            header = f.metadata() or {}
        for name, value in expected.items():
            if name in header and json.loads(header[name]) != json.loads(json.dumps(value)):
                raise LatentCacheMismatch(st_path, name, json.loads(header[name]), value, advice)
        digest = _file_sha256(st_path) if "sha256" in meta else None
        if digest is not None and digest != meta["sha256"]:
            raise LatentCacheMismatch(st_path, "sha256", digest[:16], str(meta["sha256"])[:16], advice)
        tensors = load_file(str(st_path))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise LatentCacheError(
            f"latent cache {st_path} is unreadable (truncated or corrupt: {e}); delete it and it is rebuilt"
        ) from e
    missing = sorted({"latents", "mean", "std"} - set(tensors))
    if missing:
        raise LatentCacheError(f"latent cache {st_path} lacks tensors {missing}; delete it and it is rebuilt")
    return tensors


def load_or_build_cache(
    cache_dir: str | os.PathLike | list[str | os.PathLike],
    *,
    encoder: WindowEncoder,
    frames_fn: Callable[[], np.ndarray],
    past_rows: np.ndarray,
    frame_stride: int,
    image_key: str,
    dataset_fingerprint: str,
    frame_size: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> LatentCache:
    """Return the cache for this (encoder, m, stride, camera, dataset, frame size, world tokens); build it if absent.

    `cache_dir` may be a list of folders, first choice first: the cache is read from the first that
    holds it, else built in the first writable one (a read-only dataset folder falls through to the
    user's cache). frames_fn (video decoding, expensive) is called only when the cache must be built;
    it returns frames at frame_size×frame_size (any size when frame_size is None), e.g. the frame
    cache's memmap.
    """
    rows = np.asarray(past_rows)
    if rows.ndim != 2 or rows.shape[1] != encoder.num_frames:
        # Windows of another m than the encoder's: a config whose latent_suffix disagrees with its encoder.
        # Caught here, before a valid cache is judged by these windows and called a mismatch.
        raise ValueError(
            f"windows of shape {rows.shape} for the world encoder {encoder.encoder_id}, which takes "
            f"m={encoder.num_frames} frames: the config's latent_suffix and its world encoder disagree; "
            f"expected windows of shape (N, {encoder.num_frames})"
        )
    tokens = int(getattr(encoder, "world_tokens", 1))
    key = cache_key(
        encoder.encoder_id, encoder.num_frames, frame_stride, image_key, dataset_fingerprint, frame_size, tokens
    )
    rows_sha = _past_rows_sha(past_rows)
    ident = dict(
        encoder_id=encoder.encoder_id,
        num_frames=encoder.num_frames,
        frame_stride=int(frame_stride),
        image_key=image_key,
        dataset_fingerprint=dataset_fingerprint,
        frame_size=None if frame_size is None else int(frame_size),
        world_tokens=tokens,
    )
    dirs = [Path(d) for d in cache_dir] if isinstance(cache_dir, (list, tuple)) else [Path(cache_dir)]

    def built(path: Path) -> bool:
        return all(p.exists() for p in _paths(path))

    def hit(folder: Path) -> Path | None:
        """This cache in `folder`: under its key, or, where the key holds other windows of the same
        frames (another episode key over one dataset), under the key plus this windowing's hash."""
        for path in (folder / key, folder / f"{key}-w{rows_sha}"):
            if built(path):
                meta = _read_meta(_paths(path)[1])
                if path.name == key and meta.get("past_rows_sha") not in (None, rows_sha):
                    continue
                return path
        return None

    def load(path: Path) -> LatentCache:
        return load_cache(
            path, **ident, n_frames=len(past_rows), latent_dim=encoder.latent_dim, past_rows_sha=rows_sha, keyed=True
        )

    for folder in dirs:
        if (path := hit(folder)) is not None:
            return load(path)
    folder = next((d for d in dirs if writable(d)), None)
    if folder is None:
        raise LatentCacheError(
            f"no writable folder for the latent cache {key}; tried {[str(d) for d in dirs]}. "
            "Set latent_cache_dir to a writable folder."
        )
    with locked(folder / f".{key}.lock"):
        if (path := hit(folder)) is not None:  # built by another process while this one waited
            return load(path)
        # The key itself may hold other windows over the same frames: those stay, these go beside them.
        path = folder / (f"{key}-w{rows_sha}" if built(folder / key) else key)
        frames = frames_fn()
        if frame_size is not None and tuple(np.shape(frames)[1:3]) != (frame_size, frame_size):
            raise ValueError(
                f"frames_fn gave frames of shape {np.shape(frames)}, expected "
                f"(N, {frame_size}, {frame_size}, 3) for frame_size={frame_size}"
            )
        latents = encode_latents(frames, past_rows, encoder, batch_size=batch_size, progress=progress)
        bad = _nonfinite_rows(latents)
        if len(bad):
            # Cached, they would train the Prophet and memory on NaN: nothing is written.
            raise LatentCacheError(
                f"the world encoder {encoder.encoder_id} ({encoder.dtype}) gave NaN/inf latents for {len(bad)} of "
                f"{len(latents)} windows (first: row {bad[0]}); nothing was cached. Expected finite latents: "
                f"float16 overflows (--world_encoder_dtype bfloat16 or float32); with another dtype, check the "
                f"encoder's weights."
            )
        return save_cache(path, latents, {**ident, "past_rows_sha": rows_sha})
