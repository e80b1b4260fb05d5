"""LoRA on the backbone's language model, and the one function that decides which parameters train."""

from __future__ import annotations

import re

from torch import nn


def matching_modules(model: nn.Module, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [name for name, mod in model.named_modules() if rx.fullmatch(name) and isinstance(mod, nn.Linear)]


def apply_lora(model: nn.Module, pattern: str, rank: int, alpha: int) -> list[str]:
    """Inject LoRA adapters in place; a pattern that matches no Linear module is an error, since a
    wrong pattern once trained a policy with no adapters at all."""
    from peft import LoraConfig, inject_adapter_in_model

    names = matching_modules(model, pattern)
    if not names:
        sample = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:8]
        raise ValueError(
            f"`lora_target` {pattern!r} matches no Linear module of the backbone; module names look like {sample}."
        )
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern, bias="none")
    inject_adapter_in_model(cfg, model)
    return names


def is_lora_param(name: str) -> bool:
    return ".lora_" in name


def set_trainable(policy: nn.Module, freeze_backbone: bool, text_loss: bool = False) -> None:
    """Frozen backbone: only LoRA adapters train inside it. Everything outside the backbone trains,
    except the frozen world encoder (it never trains) and the language-model head, which only the
    text loss uses (an unused trainable parameter also breaks DistributedDataParallel)."""
    for name, p in policy.named_parameters():
        if name.startswith("world_encoder.") or (".lm_head." in name and not text_loss):
            p.requires_grad_(False)
        elif name.startswith("backbone."):
            p.requires_grad_(is_lora_param(name) or not freeze_backbone)
        else:
            p.requires_grad_(True)
