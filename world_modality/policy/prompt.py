"""The one prompt builder: training, offline evaluation and closed-loop evaluation all call it."""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def build_prompt(instruction: str, n_images: int) -> str:
    """Qwen chat format with one vision block per camera; each `<|image_pad|>` is later expanded
    to the number of visual tokens of that image."""
    text = instruction.strip()
    if not text:
        raise ValueError("instruction is empty; a policy without its instruction is task-agnostic.")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}.")
    return (
        "<|im_start|>user\n"
        + IMAGE_PLACEHOLDER * n_images
        + f"What action should the robot take to {text}?<|im_end|>\n<|im_start|>assistant\n"
    )
