"""The one prompt builder: training, offline evaluation and closed-loop evaluation all call it.

Each backbone family gets its own chat format, the one its chat template renders for a single user
turn (the camera images, then the question) followed by the generation prompt. Image placeholders
are expanded to the model's visual tokens later, by the backbone (`image_block`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    user: str  # opens the user turn
    image: str  # one camera's placeholder
    end_of_turn: str  # closes the user turn
    assistant: str  # the generation prompt


CHAT_FORMATS = {
    # Qwen2.5-VL's template without its default system turn ("You are a helpful assistant."): it
    # carries nothing about the task and would lengthen every sample.
    "qwen2.5-vl": ChatFormat(
        "<|im_start|>user\n", "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n", "<|im_start|>assistant\n"
    ),
    # SmolVLM / Idefics3: "User:" with no space when the turn opens with an image.
    "smolvlm": ChatFormat("<|im_start|>User:", "<image>", "<end_of_utterance>\n", "Assistant:"),
}
IMAGE_PLACEHOLDER = CHAT_FORMATS["qwen2.5-vl"].image


def question(instruction: str) -> str:
    return f"What action should the robot take to {instruction}?"


def build_prompt(instruction: str, n_images: int, family: str = "qwen2.5-vl") -> str:
    """One user turn with one image placeholder per camera, then the instruction as a question."""
    text = instruction.strip()
    if not text:
        raise ValueError("instruction is empty; a policy without its instruction is task-agnostic.")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}.")
    try:
        fmt = CHAT_FORMATS[family]
    except KeyError:
        raise ValueError(f"no chat format for backbone family {family!r}; known: {sorted(CHAT_FORMATS)}.") from None
    return fmt.user + fmt.image * n_images + question(text) + fmt.end_of_turn + fmt.assistant
