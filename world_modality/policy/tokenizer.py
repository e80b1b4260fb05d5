"""The embedded default's tokenizer: a byte-level BPE built offline from the dataset's own text."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Names match Qwen2.5-VL's so the same prompt builder serves the tiny and the real backbone.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """Byte-level BPE: every byte string stays encodable, merges come from the given texts."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = sorted(set(texts)) + ["What action should the robot take to user assistant"]
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def tokenizer_from_json(text: str) -> Tokenizer:
    return Tokenizer.from_str(text)
