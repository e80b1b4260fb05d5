"""The wire format of openpi's policy server: msgpack, with numpy arrays and scalars as plain maps
(`b"__ndarray__"`, `b"data"`, `b"dtype"`, `b"shape"`; `b"__npgeneric__"` for scalars), no msgpack extension types,
so any msgpack client that knows the convention can talk to the server."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_UNSUPPORTED_KINDS = ("V", "O", "c")  # structured, object and complex arrays have no portable bytes


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _UNSUPPORTED_KINDS:
        raise TypeError(f"cannot send a numpy value of dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": data.tobytes(), b"dtype": data.dtype.str, b"shape": list(data.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        # A copy: the buffer msgpack hands over is read-only, and callers may write into what they receive.
        return np.frombuffer(obj[b"data"], dtype=dtype).reshape(obj[b"shape"]).copy()
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    """obj (dicts, lists, str, numbers, numpy arrays and scalars) as one msgpack message."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """One msgpack message back into Python, numpy arrays restored (writable copies)."""
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
