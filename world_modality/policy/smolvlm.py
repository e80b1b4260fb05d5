"""SmolVLM backbone (Idefics3 architecture): SigLIP vision encoder, pixel-shuffle connector, Llama text model.

Real checkpoints load from a local path: SmolVLM v1 (`HuggingFaceTB/SmolVLM-256M/500M-Instruct`,
`SmolVLM-Instruct`) declare `Idefics3ForConditionalGeneration`, SmolVLM2 declares
`SmolVLMForConditionalGeneration`; both share the module layout used here. The tiny variant is a
random `SmolVLMForConditionalGeneration`.

Images: one global image per camera, as the processor does with `do_image_splitting=False`. At the
policy's small square images, splitting would only cut an upscaled image into tiles. Pixel inputs
reproduce the processor without torchvision: resize to the vision encoder's square input, rescale
to [0, 1], normalise. The processor resizes with PIL's Lanczos filter; here an antialiased bicubic
resize runs on the tensor, so the two agree exactly only when no resize is needed (the tiny
variant's encoder input is the policy's image size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import DTYPES, VLMBackbone, load_local

# SmolVLM's prompt tokens, as its tokenizer names them.
IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
SMOLVLM_SPECIAL_TOKENS = [FAKE_IMAGE_TOKEN, IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN, END_OF_UTTERANCE]
# SmolVLM's processor normalises with mean = std = 0.5 (IMAGENET_STANDARD) unless the checkpoint says otherwise.
STANDARD_MEAN = (0.5, 0.5, 0.5)
STANDARD_STD = (0.5, 0.5, 0.5)
MODEL_CLASSES = {"idefics3": "Idefics3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}


@dataclass(frozen=True)
class TinySmolVLMSize:
    """Sizes of the tiny variant: at 128x128 images it gives 16 tokens per camera, like the tiny Qwen."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    vision_hidden: int = 64
    vision_depth: int = 2
    patch_size: int = 16
    scale_factor: int = 2


class SmolVLMBackbone(VLMBackbone):
    """Each camera becomes `<fake_token_around_image><global-img><image>×N<fake_token_around_image>`,
    N = (image_size / patch_size)² / scale_factor²."""

    family = "smolvlm"
    image_token = IMAGE_TOKEN
    pad_token = "<|im_end|>"  # SmolVLM's tokenizer pads with it
    text_end_token = END_OF_UTTERANCE

    def __init__(self, model: nn.Module, tokenizer, pretrained: bool, mean=STANDARD_MEAN, std=STANDARD_STD):
        super().__init__(model, tokenizer, pretrained, model.config.image_token_id)
        vc = model.config.vision_config
        self.vision_size = int(vc.image_size)
        self.patch_size = int(vc.patch_size)
        self.scale_factor = int(model.config.scale_factor)
        side = self.vision_size // self.patch_size
        if self.vision_size % self.patch_size or side % self.scale_factor:
            raise ValueError(
                f"vision image_size {self.vision_size} must be a multiple of patch_size "
                f"{self.patch_size}, and the patch grid ({side}) of scale_factor {self.scale_factor}."
            )
        self.image_seq_len = side * side // self.scale_factor**2
        self.fake_token_id = self.token_id(FAKE_IMAGE_TOKEN)
        self.global_token_id = self.token_id(GLOBAL_IMAGE_TOKEN)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def image_block(self, tokens_per_image: int) -> list[int]:
        return (
            [self.fake_token_id, self.global_token_id] + [self.image_token_id] * tokens_per_image + [self.fake_token_id]
        )

    def tokens_per_image(self, height: int, width: int) -> int:
        return self.image_seq_len  # every image is resized to the encoder's square input

    def check_image_size(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"image_size must be >= 1, got {size}.")

    def pixel_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [0, 1] -> (N, 3, S, S) normalised, S the vision encoder's input side."""
        s = self.vision_size
        x = images.float()
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
        return (x - self.pixel_mean) / self.pixel_std

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, image_seq_len, hidden). Calls the encoder and connector
        directly: the model's own entry point drops any image that normalises to all zeros as padding."""
        inner = self.model.model
        px = self.pixel_inputs(images).to(self.dtype)
        side = self.vision_size // self.patch_size
        patch_mask = torch.ones((px.shape[0], side, side), dtype=torch.bool, device=px.device)
        hidden = inner.vision_model(pixel_values=px, patch_attention_mask=patch_mask).last_hidden_state
        return inner.connector(hidden)

    def forward(self, input_ids, inputs_embeds, attention_mask, mm_token_type_ids, images) -> torch.Tensor:
        """images: (B, n_cams, 3, H, W) in [0, 1], in the prompt's camera order -> last hidden states."""
        feats = self.image_features(images.flatten(0, 1))
        slots = input_ids == self.image_token_id
        if int(slots.sum()) != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"the prompts hold {int(slots.sum())} image tokens, the images give "
                f"{feats.shape[0]}×{feats.shape[1]} features."
            )
        embeds = inputs_embeds.masked_scatter(slots.unsqueeze(-1), feats.to(inputs_embeds.dtype))
        # Positions count real tokens, so a left-padded row sees the same positions as unpadded.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.model.model.text_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state


def extend_tokenizer(tokenizer):
    """A copy of the project's BPE tokenizer with SmolVLM's special tokens added (idempotent, so a
    tokenizer read back from a checkpoint keeps its ids)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.add_special_tokens(SMOLVLM_SPECIAL_TOKENS)
    return tok


def tiny_smolvlm_config(
    vocab_size: int, token_ids: dict[str, int], image_size: int, size: TinySmolVLMSize = TinySmolVLMSize()
):
    from transformers import SmolVLMConfig

    return SmolVLMConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=vocab_size,
            hidden_size=size.hidden_size,
            intermediate_size=size.intermediate_size,
            num_hidden_layers=size.num_layers,
            num_attention_heads=size.num_heads,
            num_key_value_heads=max(1, size.num_heads // 2),
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            bos_token_id=token_ids["<|im_start|>"],
            eos_token_id=token_ids[END_OF_UTTERANCE],
            pad_token_id=token_ids["<|im_end|>"],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_hidden_layers=size.vision_depth,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=size.patch_size,
        ),
        scale_factor=size.scale_factor,
        image_token_id=token_ids[IMAGE_TOKEN],
        pad_token_id=token_ids["<|im_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_smolvlm(
    tokenizer, image_size: int, seed: int = 0, size: TinySmolVLMSize = TinySmolVLMSize(), dtype: str = "float32"
) -> SmolVLMBackbone:
    """Random SmolVLM whose vision encoder takes the policy's image size directly (no resize)."""
    from transformers import SmolVLMForConditionalGeneration

    unit = size.patch_size * size.scale_factor
    if image_size % unit:
        raise ValueError(
            f"image_size {image_size} must be a multiple of patch_size*scale_factor = {unit} for tiny-smolvlm."
        )
    tok = extend_tokenizer(tokenizer)
    names = ["<|im_start|>", "<|im_end|>", *SMOLVLM_SPECIAL_TOKENS]
    cfg = tiny_smolvlm_config(tok.get_vocab_size(), {t: tok.token_to_id(t) for t in names}, image_size, size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SmolVLMForConditionalGeneration(cfg)
    return SmolVLMBackbone(model.to(DTYPES[dtype]), tok, pretrained=False)


def load_smolvlm(path: str, dtype: str = "float32") -> SmolVLMBackbone:
    """Real SmolVLM (Idefics3 or SmolVLM2 class, as the folder's config says) from a local folder or hub cache."""
    model, tokenizer = load_local(path, MODEL_CLASSES, dtype)
    mean, std = STANDARD_MEAN, STANDARD_STD
    pre = Path(path) / "preprocessor_config.json"
    if pre.exists():  # a hub-cache id resolves to the same values; only a local folder can override them
        conf = json.loads(pre.read_text())
        mean, std = tuple(conf.get("image_mean", mean)), tuple(conf.get("image_std", std))
    return SmolVLMBackbone(model, tokenizer, pretrained=True, mean=mean, std=std)
