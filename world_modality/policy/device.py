"""Where a loaded policy runs: the one parser of the `--device` setting of the evaluation commands."""

from __future__ import annotations

import re

import torch

from ..config import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` -> CUDA when torch sees a GPU, else CPU; `cpu`, `cuda`, `cuda:N` as named.

    Checked before anything loads, so a typo or a missing GPU fails at once rather than after a
    multi-gigabyte checkpoint has been read."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m is None:
        raise ConfigError(f"device must be one of {', '.join(DEVICE_CHOICES)}; got {str(name)!r}.")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {str(name)!r}: torch sees no CUDA GPU here; use --device cpu (or auto).")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {str(name)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"indices 0..{torch.cuda.device_count() - 1}."
        )
    return torch.device(text)
