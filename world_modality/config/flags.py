"""Command-line flags of the config: one flag per field, named as the field, with its help; parsing them."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from .checks import (
    ACTION_HEADS,
    BACKBONE_DTYPES,
    BACKBONES,
    FLOW_TIME_SAMPLING,
    MEMORY_MODES,
    TRAIN_MEMORY_MODES,
    WORLD_ENCODER_DTYPES,
)
from .presets import PRESETS, build_config
from .sections import FIELD_SECTION, SECTIONS, ExperimentConfig, flatten


def _one_of(choices: Sequence[str]) -> str:
    return "one of " + ", ".join(choices)


# What each field does, its unit and its choices; `add_config_flags` appends the default. Every field has one.
FIELD_HELP = {
    # data
    "dataset": "root folder of a LeRobot v3-layout dataset on local disk",
    "instruction_key": "column that holds each frame's instruction ('task' resolves through task_index)",
    "episode_id_key": "column that names each frame's episode",
    "state_key": "column of the proprioceptive state vector",
    "action_key": "column of the action vector",
    "image_keys": "cameras the policy sees, one or more dataset columns",
    "image_size": "side in pixels of the square images the policy sees, 16 to 1024",
    "val_fraction": "share of episodes (per task) held out for eval-offline, in (0, 1); at least one episode",
    "coc_jsonl": "JSONL file of chain-of-causation annotations {episode_index, frame_index, text} (E4's text loss)",
    # world
    "world_encoder": "tiny-vjepa2 (random V-JEPA 2, embedded default) | vjepa2 (weights from --world_encoder_path) | "
    "env_state (privileged: the dataset's observation.environment_state, object poses and joints, "
    "normalised with training statistics, m frames concatenated; the E2-State upper bound)",
    "world_encoder_path": "local folder or hub-cache id of the V-JEPA 2 weights (needed by --world_encoder vjepa2)",
    "world_encoder_dtype": f"{_one_of(WORLD_ENCODER_DTYPES)}: the world encoder's weights (auto: bfloat16 for "
    f"vjepa2 on CUDA, else float32)",
    "world_image_key": "camera column the world encoder watches",
    "world_image_size": "side in pixels of the world encoder's input frames, 16 to 1024",
    "latent_suffix": "frames per world latent, written m<m> ('m4': the last 4 frames)",
    "frame_stride": "dataset frames between the m frames of a latent; also the closed-loop replanning interval",
    "world_tokens": "N spatial world tokens, a perfect square: the V-JEPA token map averaged over time and pooled to a "
    "√N×√N grid (4: 2x2); the Prophet predicts all N, the cross-attention attends over "
    "N × n_memory_tokens memory tokens; 1 = one mean vector",
    "future_offset": "k, in dataset frames: the Prophet predicts the latent z_{t+k}",
    "delta_prediction": "the Prophet predicts the change δ = z_{t+k} − z_t instead of z_{t+k}",
    "lambda_world": "weight of the world loss (the Prophet's error) in the total loss, >= 0; 0 = no world loss",
    "prophet_hidden": "width in units of the Prophet's MLP",
    "latent_cache_dir": "folder of the world-latent cache (unset: <dataset>/.cache/latents, or the user's cache "
    "folder for a read-only dataset)",
    # policy
    "backbone": f"the VLM backbone, {_one_of(BACKBONES)} (tiny-*: small random models, no download; qwen2.5-vl "
    f"(Qwen2.5-VL) and smolvlm (SmolVLM) load --backbone_path)",
    "backbone_path": "local folder or hub-cache id of the VLM weights (needed by qwen2.5-vl and smolvlm)",
    "backbone_dtype": f"{_one_of(BACKBONE_DTYPES)}: the VLM's weights (bfloat16 on GPUs)",
    "tiny_width": "hidden size of tiny-qwen2.5-vl's language model (its MLP is twice as wide), a positive multiple "
    "of 16 (4 attention heads, each with a head dim that is a multiple of 4); other backbones keep the default",
    "tiny_depth": "language-model layers of tiny-qwen2.5-vl, >= 1; other backbones keep the default",
    "freeze_backbone": "freeze every backbone weight (LoRA adapters still train; the checkpoint then leaves the "
    "pretrained weights out)",
    "use_lora": "add LoRA adapters to the language model's attention projections",
    "lora_rank": "rank of each LoRA adapter, >= 1",
    "lora_alpha": "LoRA scaling numerator (the update is scaled by alpha / rank), >= 1",
    "lora_target": "regular expression on module names that get LoRA (unset: the family's language-model attention "
    "projections q/k/v/o)",
    "n_act_tokens": "learned ACT query tokens read out after the prompt, >= 1",
    "chunk_size": "actions predicted per policy call, >= 1",
    "action_head": f"{_one_of(ACTION_HEADS)}: regress the chunk (mse) or sample it by flow matching (flow)",
    "flow_steps": "Euler steps when sampling actions with the flow head, >= 1",
    "flow_time_sampling": f"{_one_of(FLOW_TIME_SAMPLING)}: how training draws the flow time (beta: pi0's schedule)",
    "disable_future_injection": "remove the world-memory cross-attention branch (E0)",
    "n_memory_tokens": "tokens each world latent is projected to for the cross-attention, >= 1",
    "memory_mode": f"what the action path attends to in training and, by default, evaluation: "
    f"{_one_of(TRAIN_MEMORY_MODES)} (predicted: the Prophet's ẑ_{{t+k}}; present: z_t, history "
    f"without foresight, E2-Present); "
    f"{', '.join(m for m in MEMORY_MODES if m not in TRAIN_MEMORY_MODES)} are evaluation ablations",
    "lambda_text": "weight of the chain-of-causation text loss, >= 0 (> 0 needs --coc_jsonl; E4)",
    "max_text_tokens": "longest chain-of-causation text, in tokens, >= 1",
    # train
    "output_dir": "run folder: config.json, metrics, TensorBoard logs and checkpoints",
    "batch_size": "samples per optimiser step on each process, >= 1",
    "max_epochs": "passes over the training samples, >= 1 (a resumed run continues to this many)",
    "lr": "AdamW learning rate, a finite number > 0",
    "weight_decay": "AdamW weight decay, >= 0",
    "grad_clip": "largest gradient norm before clipping, >= 0 (0 = no clipping)",
    "seed": "random seed of initialisation, sample order, augmentation and noise",
    "save_every_steps": "optimiser steps between extra mid-epoch checkpoints (0 = only at epoch ends)",
    "keep_checkpoints": "newest checkpoints kept on disk, >= 1",
    "resume": "continue from the newest checkpoint in --output_dir (--no-resume: move an earlier run aside and "
    "start over)",
    "num_threads": "CPU threads for torch (0 = half the cores)",
    "augment_shift": "largest random image shift in pixels in training (0 = off)",
    "tensorboard": "also write TensorBoard logs to <output_dir>/tensorboard",
    "dist_timeout_minutes": "minutes the other processes of a multi-process run wait while the main one builds "
    "the caches, >= 1",
    "num_workers": "DataLoader worker processes that assemble batches, >= 0 (0 = in the training process; "
    "results are the same bit for bit)",
    "prefetch_factor": "batches each loader worker builds ahead, >= 1",
    "warmup_steps": "optimizer updates of linear learning-rate warmup from 0 to --lr, >= 0",
    "lr_schedule": "learning rate after warmup, one of constant, cosine (decays to 0 at the last update)",
    "grad_accum_steps": "batches whose gradients add up to one optimizer update, >= 1 (effective batch: "
    "batch_size x this x processes)",
    "ema_decay": "decay of an exponential moving average of the trainable weights, in [0, 1) (0 = off); "
    "checkpoints store it as ema.safetensors and evaluation loads it",
    "val_loss": "log the held-out validation loss at each epoch end (val_* keys in metrics.jsonl)",
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, named as the field; defaults suppressed so presets can show through."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=f"named experiment to start from, {_one_of(sorted(PRESETS))} (default: none, the field defaults)",
    )
    parser.add_argument(
        "--config", default=None, help="a saved config.json to start from; --preset and the flags given override it"
    )
    for name, sub in SECTIONS.items():
        group = parser.add_argument_group(name)
        defaults = sub()
        for f in dataclasses.fields(sub):
            default = getattr(defaults, f.name)
            flag = f"--{f.name}"
            help_text = f"{FIELD_HELP[f.name]} (default: {default!r})"
            if isinstance(default, bool):
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
                )
            elif isinstance(default, tuple):
                group.add_argument(flag, nargs="+", default=argparse.SUPPRESS, help=help_text)
            elif f.name == "grad_clip":
                group.add_argument(
                    flag, "--max_grad_norm", dest="grad_clip", type=float, default=argparse.SUPPRESS, help=help_text
                )
            elif f.name == "dataset":
                group.add_argument(flag, "--dataset_root", dest="dataset", default=argparse.SUPPRESS, help=help_text)
            else:
                kind = {int: int, float: float}.get(type(default), str)
                group.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Saved config (if --config), then the preset, then the flags given on the command line."""
    overrides = {k: v for k, v in vars(args).items() if k in FIELD_SECTION}
    if getattr(args, "config", None):
        base = ExperimentConfig.from_json(args.config)
        flat = flatten(base)
        if args.preset:
            flat.update(PRESETS[args.preset])
        flat.update(overrides)
        return build_config(flat, preset=args.preset or base.preset)
    return build_config(overrides, preset=args.preset)


def parse_train_args(argv: Sequence[str] | None = None, prog: str = "world_modality.train") -> ExperimentConfig:
    parser = argparse.ArgumentParser(prog=prog, description="Train a World Modality policy (E0/E2/E4/Flow presets).")
    add_config_flags(parser)
    return config_from_args(parser.parse_args(argv))
