"""V-JEPA 2 frame processing without torchvision: the checkpoint's video processor config read back, and its
resize, center crop and ImageNet normalisation constants."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VJEPA2VideoProcessor (transformers 5.x) resizes the shortest edge to int(crop_size * 256 / 224)
# whatever its config's "size" says, then center-crops crop_size.
RESIZE_RATIO = 256 / 224
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class VJEPA2Processing:
    """The video processor's steps for a pretrained checkpoint: resize, center crop, normalize."""

    crop_size: int
    shortest_edge: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_crop(cls, crop_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> VJEPA2Processing:
        return cls(int(crop_size), int(crop_size * RESIZE_RATIO), tuple(map(float, mean)), tuple(map(float, std)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "crop_size": self.crop_size,
            "shortest_edge": self.shortest_edge,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _processor_config(pretrained_path: str) -> tuple[str, dict] | None:
    """The checkpoint's video processor config (local folder or hub cache), if it has one."""
    for fname in PROCESSOR_FILES:
        if os.path.isdir(pretrained_path):
            f = os.path.join(pretrained_path, fname)
            found = f if os.path.isfile(f) else None
        else:
            from transformers.utils import cached_file

            found = cached_file(
                pretrained_path,
                fname,
                local_files_only=True,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        if found:
            with open(found) as fh:
                return found, json.load(fh)
    return None


def read_processing(pretrained_path: str, model_crop_size: int) -> VJEPA2Processing:
    """What VJEPA2VideoProcessor.from_pretrained(pretrained_path) would do, without torchvision.

    crop_size, mean and std come from the processor config when the checkpoint has one, else the
    processor's defaults with the model's crop_size; the resize target always follows crop_size.
    """
    found = _processor_config(pretrained_path)
    if found is None:
        return VJEPA2Processing.for_crop(model_crop_size)
    where, cfg = found
    crop = cfg.get("crop_size", model_crop_size)
    if isinstance(crop, dict):
        if crop.get("height") != crop.get("width", crop.get("height")):
            raise ValueError(f"{where}: crop_size {crop} is not square; the world encoder expects a square crop")
        crop = crop["height"]
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if cfg.get(flag, True) is not True:
            raise ValueError(f"{where}: {flag}={cfg[flag]!r} is not supported (expected true)")
    resample = cfg.get("resample", 2)
    if resample != 2:  # PIL BILINEAR
        raise ValueError(f"{where}: resample={resample!r} is not supported (expected 2, bilinear)")
    rescale = float(cfg.get("rescale_factor", 1 / 255))
    if abs(rescale - 1 / 255) > 1e-9:
        raise ValueError(f"{where}: rescale_factor={rescale} is not supported (expected 1/255)")
    return VJEPA2Processing.for_crop(
        int(crop), cfg.get("image_mean", IMAGENET_MEAN), cfg.get("image_std", IMAGENET_STD)
    )


def resize_output_size(h: int, w: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to shortest_edge (transformers' rounding: int())."""
    if w <= h:
        return int(shortest_edge * h / w), shortest_edge
    return shortest_edge, int(shortest_edge * w / h)


def vjepa2_resize_crop(x: torch.Tensor, shortest_edge: int, crop: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, crop, crop) on the CPU, as the video processor does it:
    antialiased bilinear resize of the shortest edge, then a center crop.

    The resize runs on uint8 on the CPU, where the processor runs by default: torchvision then
    takes torch's uint8 kernel (on AVX2/AVX512 machines), which rounds like PIL. A float resize
    rounded afterwards differs by one level on about a fifth of the pixels.
    """
    h, w = x.shape[-2:]
    size = resize_output_size(h, w, shortest_edge)
    x = x.cpu()
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    h, w = size
    if crop > h or crop > w:
        raise ValueError(f"resized frames {h}x{w} are smaller than the crop {crop}")
    top, left = int((h - crop) / 2.0), int((w - crop) / 2.0)
    return x[..., top : top + crop, left : left + crop]
