"""Encode uint8 frame arrays to mp4 and decode mp4 files (or a time range of one) back to arrays."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# h264 is what the public LeRobot LIBERO videos use; mpeg4 is a fallback for minimal FFmpeg builds.
_PREFERRED_CODECS = ("libx264", "mpeg4")


def pick_codec() -> str:
    for name in _PREFERRED_CODECS:
        if name in av.codecs_available:
            return name
    raise RuntimeError(f"no usable video encoder: none of {_PREFERRED_CODECS} is in this PyAV build")


class VideoWriter:
    """Streams frames into one mp4, so many episodes can share a file without holding them in memory."""

    def __init__(self, path: str | Path, fps: int, height: int, width: int, crf: int = 10):
        if height % 2 or width % 2:
            # yuv420p halves chroma resolution, so encoders reject odd sizes.
            raise ValueError(f"video frames must have even height and width for yuv420p, got {height}x{width}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.height, self.width, self.fps = height, width, fps
        self.codec = pick_codec()
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(self.codec, rate=fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        # pts count frames, so a frame's time is exactly pts/fps and episode ranges are frame-exact.
        self._stream.time_base = Fraction(1, fps)
        if self.codec == "libx264":
            # A low crf keeps decoded frames close to the originals (models train on decoded pixels).
            # A regenerated dataset must keep its fingerprint (and so its latent cache), so the bytes
            # must not vary: one thread (frame threading depends on scheduling), and no mbtree, whose
            # lookahead reads uninitialised stack memory (valgrind) and so varied with call history.
            self._stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        else:
            self._stream.bit_rate = max(2_000_000, height * width * fps * 4)
            self._stream.thread_count = 1
        self.n_frames = 0

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"frames must be uint8 (T,{self.height},{self.width},3), got {frames.dtype} {frames.shape}"
            )
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.n_frames
            frame.time_base = Fraction(1, self.fps)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.n_frames += 1

    def close(self) -> Path:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
        return self.path


def encode_video(frames: np.ndarray, path: str | Path, fps: int = 10, crf: int = 10) -> Path:
    """Write a uint8 (T,H,W,3) array to `path` as an mp4; H and W must be even."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected a non-empty (T,H,W,3) array, got shape {frames.shape}")
    writer = VideoWriter(path, fps, frames.shape[1], frames.shape[2], crf=crf)
    try:
        writer.write(frames)
    finally:
        writer.close()
    return Path(path)


def iter_video_frames(path: str | Path, from_ts: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Decode an mp4 one frame at a time: (time in seconds, (H,W,3) uint8), in presentation order,
    starting at or before from_ts. Only the current frame is held, whatever the file's length."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if from_ts is not None and from_ts > 0 and stream.time_base is not None:
            # Seeking lands on the keyframe at or before from_ts; callers drop the frames before it.
            container.seek(int(max(0.0, from_ts - 1.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else float(frame.time)
            yield t, frame.to_ndarray(format="rgb24")


def video_length(path: str | Path) -> tuple[int | None, float | None, tuple[int, int]]:
    """(frame count, seconds, (height, width)) of an mp4's first video stream, from the container's header
    alone (nothing decoded); count and seconds are None where the container does not record them. An
    unreadable file is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            frames = int(stream.frames) or None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            elif frames and stream.average_rate:
                seconds = frames / float(stream.average_rate)
            else:
                seconds = None
            size = (int(stream.codec_context.height), int(stream.codec_context.width))
    except av.FFmpegError as e:
        raise ValueError(f"{path} is not a readable video ({e})") from None
    return frames, seconds, size


def decode_video_with_times(
    path: str | Path, from_ts: float | None = None, to_ts: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode frames with time in [from_ts, to_ts); returns (frames (T,H,W,3) uint8, times (T,) seconds)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    # 0.1 ms of slack absorbs rounding of timestamps stored as float32 in metadata.
    eps = 1e-4
    lo = -np.inf if from_ts is None else from_ts - eps
    hi = np.inf if to_ts is None else to_ts - eps
    frames, times = [], []
    for t, img in iter_video_frames(path, from_ts):
        if t < lo:
            continue
        if t >= hi:
            break
        frames.append(img)
        times.append(t)
    if not frames:
        raise ValueError(f"no frames in {path} within [{from_ts}, {to_ts})")
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def decode_video(path: str | Path, from_ts: float | None = None, to_ts: float | None = None) -> np.ndarray:
    """Decode an mp4 (optionally only frames with time in [from_ts, to_ts)) to uint8 (T,H,W,3)."""
    return decode_video_with_times(path, from_ts, to_ts)[0]
