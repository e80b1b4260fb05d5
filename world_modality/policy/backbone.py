"""VLM backbones: the shared interface, and Qwen2.5-VL (tiny random config, or real weights from a path).

A backbone turns camera images + a tokenised prompt into hidden states; the policy reads its ACT
query positions. Each family supplies its own prompt tokens, image token block and pixel inputs
(Qwen's patchification is reproduced here, so torchvision is not needed); SmolVLM is in smolvlm.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Qwen2-VL's normalisation constants (OpenAI CLIP's), as its image processor applies them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TinyQwenSize:
    """Sizes of the embedded default; small enough for a CPU step in tens of milliseconds."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    vision_hidden: int = 64
    vision_depth: int = 2
    patch_size: int = 16
    merge_size: int = 2


def tiny_qwen_config(vocab_size: int, token_ids: dict[str, int], size: TinyQwenSize = TinyQwenSize()):
    from transformers import Qwen2_5_VLConfig

    head_dim = size.hidden_size // size.num_heads
    # mrope splits head_dim/2 rotary frequencies over (time, height, width) like the real 3:4:4-ish split.
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    mrope = [t, h, half - t - h]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=size.hidden_size,
            intermediate_size=size.intermediate_size,
            num_hidden_layers=size.num_layers,
            num_attention_heads=size.num_heads,
            num_key_value_heads=max(1, size.num_heads // 2),
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            bos_token_id=token_ids["<|endoftext|>"],
            eos_token_id=token_ids["<|im_end|>"],
            pad_token_id=token_ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=size.vision_depth,
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_heads=4,
            patch_size=size.patch_size,
            spatial_merge_size=size.merge_size,
            temporal_patch_size=2,
            window_size=size.patch_size * 4,
            out_hidden_size=size.hidden_size,
            fullatt_block_indexes=[size.vision_depth - 1],
        ),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


class VLMBackbone(nn.Module):
    """A VLM with its tokenizer. Subclasses name their family's tokens and implement the image side
    (`image_block`, `tokens_per_image`, `check_image_size`, `pixel_inputs`, `forward`), so the one
    preprocessor and the one prompt builder serve every family. `pretrained` tells the checkpoint
    whether the base weights reload from a path."""

    family: str
    image_token: str  # the prompt's per-image placeholder
    pad_token: str  # fills left padding (masked out)
    text_end_token: str  # closes a turn: ends chain-of-causation targets

    def __init__(self, model: nn.Module, tokenizer, pretrained: bool, image_token_id: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer` (tiny) or a transformers tokenizer
        self.pretrained = pretrained
        self.hidden_size = model.config.text_config.hidden_size
        self.image_token_id = int(image_token_id)
        if self.token_id(self.image_token) != self.image_token_id:
            raise ValueError(
                f"tokenizer maps {self.image_token!r} to {self.token_id(self.image_token)}, but the model "
                f"config's image token id is {self.image_token_id}: tokenizer and weights do not "
                f"belong together."
            )
        self.pad_token_id = self.token_id(self.pad_token)
        self.text_end_id = self.token_id(self.text_end_token)

    # -- tokens ---------------------------------------------------------------------------------
    def token_id(self, token: str) -> int:
        tok = self.tokenizer
        tid = tok.token_to_id(token) if hasattr(tok, "token_to_id") else tok.convert_tokens_to_ids(token)
        if tid is None or (getattr(tok, "unk_token_id", None) is not None and tid == tok.unk_token_id):
            raise ValueError(f"tokenizer has no token {token!r}, which the {self.family} prompt format needs.")
        return int(tid)

    def encode_text(self, text: str) -> list[int]:
        if hasattr(self.tokenizer, "token_to_id"):
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def image_block(self, tokens_per_image: int) -> list[int]:
        """What one image placeholder of the prompt expands to, as the family's processor expands it."""
        return [self.image_token_id] * tokens_per_image

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)


class QwenBackbone(VLMBackbone):
    """Qwen2.5-VL: `<|image_pad|>` repeated once per merged patch, between vision start/end tokens."""

    family = "qwen2.5-vl"
    image_token = "<|image_pad|>"
    pad_token = "<|endoftext|>"
    text_end_token = "<|im_end|>"

    def __init__(self, model: nn.Module, tokenizer, pretrained: bool):
        super().__init__(model, tokenizer, pretrained, model.config.image_token_id)
        vc = model.config.vision_config
        self.patch_size = int(vc.patch_size)
        self.merge_size = int(vc.spatial_merge_size)
        self.temporal_patch_size = int(vc.temporal_patch_size)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def tokens_per_image(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size) // (self.merge_size**2)

    def check_image_size(self, size: int) -> None:
        unit = self.patch_size * self.merge_size
        if size % unit:
            raise ValueError(
                f"image_size {size} must be a multiple of patch_size*merge_size = {unit} for this backbone."
            )

    # -- images ---------------------------------------------------------------------------------
    def pixel_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) floats in [0, 1] -> (patches, grid_thw) exactly as Qwen2-VL's image processor
        lays them out: a still image is repeated over the temporal patch, patches grouped by merge window."""
        n, c, h, w = images.shape
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        x = (images - self.pixel_mean) / self.pixel_std
        x = x.unsqueeze(1).expand(n, tp, c, h, w)
        gh, gw = h // p, w // p
        x = x.reshape(n, 1, tp, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        patches = x.reshape(n * gh * gw, c * tp * p * p)
        grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=images.device)
        return patches, grid

    # -- forward --------------------------------------------------------------------------------
    def forward(self, input_ids, inputs_embeds, attention_mask, mm_token_type_ids, images) -> torch.Tensor:
        """images: (B, n_cams, 3, H, W) in [0, 1], in the prompt's camera order -> last hidden states."""
        pixel_values, grid = self.pixel_inputs(images.flatten(0, 1).to(inputs_embeds.dtype))
        out = self.model.model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            use_cache=False,
        )
        return out.last_hidden_state


def build_tiny_qwen(
    tokenizer, seed: int = 0, size: TinyQwenSize = TinyQwenSize(), dtype: str = "float32"
) -> QwenBackbone:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .tokenizer import SPECIAL_TOKENS

    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    cfg = tiny_qwen_config(tokenizer.get_vocab_size(), ids, size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    return QwenBackbone(model.to(DTYPES[dtype]), tokenizer, pretrained=False)


def _not_found(where: str, path: str, e: OSError) -> FileNotFoundError:
    return FileNotFoundError(
        f"could not load a VLM from {where} {path!r} (nothing is downloaded at run time; "
        f"put the weights there or in your hub cache first): {e}"
    )


def load_local(path: str, classes: dict[str, str], dtype: str = "float32"):
    """(model, tokenizer) from a local folder or the user's hub cache; never downloads and never
    runs code from the folder. `classes` maps the accepted config `model_type`s to transformers
    class names, so a folder holding another model is refused before any weight is read."""
    import transformers
    from transformers import AutoTokenizer

    config = local_config(path, classes)
    where = "folder" if Path(path).exists() else "hub-cache id"
    try:
        model = getattr(transformers, classes[config.model_type]).from_pretrained(
            path, local_files_only=True, dtype=DTYPES[dtype]
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except OSError as e:
        raise _not_found(where, path, e) from e
    return model, tokenizer


def local_config(path: str, classes: dict[str, str]):
    """The model config of a local folder or hub-cache id (config.json only: no weights, no code
    from the folder), refused unless its `model_type` is one of `classes`."""
    from transformers import AutoConfig

    where = "folder" if Path(path).exists() else "hub-cache id"
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError as e:
        raise _not_found(where, path, e) from e
    if config.model_type not in classes:
        raise ValueError(
            f"{where} {path!r} holds a {config.model_type!r} model "
            f"({getattr(config, 'architectures', None)}); expected model_type one of {sorted(classes)}."
        )
    return config


QWEN_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


def load_qwen(path: str, dtype: str = "float32") -> QwenBackbone:
    """Real Qwen2.5-VL (3B, 7B, ...) from a local folder or the user's hub cache."""
    model, tokenizer = load_local(path, QWEN_CLASSES, dtype)
    return QwenBackbone(model, tokenizer, pretrained=True)
