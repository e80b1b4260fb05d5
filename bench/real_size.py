"""Inference latency and peak GPU memory of the real-size policy: Qwen2.5-VL-3B + V-JEPA 2 ViT-L in
bfloat16, random weights built from their real configurations (nothing is downloaded), one policy
step split into world encoder / Prophet / backbone / head.

    python bench/real_size.py                 # real size, needs a CUDA GPU; writes bench/results/real_size.json
    python bench/real_size.py --tiny          # the same code on the embedded default's tiny configs, on CPU
    python bench/real_size.py --qwen-config DIR --vjepa2-config DIR   # configs from local folders instead
    python bench/real_size.py --study-slice   # a slice of one study run per arm (E2, E0), timed per stage

--study-slice sizes a study before machines are rented: per arm, optimiser steps of the real-size policy on
synthetic LIBERO-shaped samples (the trainer's loss, AdamW), validation batches, closed-loop chunks as evaluation
asks for them and the latent cache's encoding, then one run's GPU hours at the study's gpu budget, derived from
those medians (formulas under "derived"); its figures go under "study_slice" in the results file.

Without a GPU (and without --tiny) it says so and exits 0. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/real_size.py` from a clone without an install
    sys.path.insert(0, str(ROOT))
RESULT_PATH = ROOT / "bench" / "results" / "real_size.json"
INSTRUCTION = "put the black bowl on the plate"

# Qwen/Qwen2.5-VL-3B-Instruct config.json (token ids are taken from the tokenizer in use).
QWEN25_VL_3B_TEXT = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    tie_word_embeddings=True,
)
QWEN25_VL_3B_VISION = dict(
    depth=32,
    hidden_act="silu",
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_chans=3,
    out_hidden_size=2048,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
# facebook/vjepa2-vitl-fpc64-256 (the encoder part is what the policy runs; the predictor is skipped).
VJEPA2_VITL_256 = dict(
    crop_size=256,
    patch_size=16,
    frames_per_clip=64,
    tubelet_size=2,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    mlp_ratio=4.0,
    pred_hidden_size=384,
    pred_num_hidden_layers=12,
    pred_num_attention_heads=12,
    pred_num_mask_tokens=10,
)
PARTS = ("preprocess", "world_encoder", "backbone", "prophet", "head", "step")
# --study-slice: the arms a study compares, and its evaluation (every task of a suite x its 50 stored initial states).
ARMS = ("E2", "E0")
TASKS_PER_SUITE, STATES_PER_TASK = 10, 50
SLICE, META = "study_slice", ("derived", "derived_assumptions")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs on CPU (tests this script)")
    ap.add_argument("--qwen-config", default=None, help="local folder with a Qwen2.5-VL config.json (and tokenizer)")
    ap.add_argument("--vjepa2-config", default=None, help="local folder with a V-JEPA 2 config.json")
    ap.add_argument("--n", type=int, default=None, help="timed calls (default 50; 5 with --tiny)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5; 1 with --tiny)")
    ap.add_argument("--batch", type=int, default=1, help="observations per policy call")
    ap.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side of the policy's camera images (default 224, a multiple of Qwen's 28; 64 with --tiny)",
    )
    ap.add_argument("--frames", type=int, default=4, help="m: frames per world latent")
    ap.add_argument("--action-head", choices=("mse", "flow"), default="mse")
    ap.add_argument("--out", default=None, help=f"results file in real mode (default {RESULT_PATH.relative_to(ROOT)})")
    ap.add_argument("--study-slice", action="store_true", help="time a slice of one study run per arm (E2, E0)")
    ap.add_argument(
        "--train-batch",
        type=int,
        default=None,
        help="--study-slice: samples per optimiser step (default the gpu budget's 32; 2 with --tiny)",
    )
    ap.add_argument(
        "--train-steps", type=int, default=None, help="--study-slice: timed optimiser steps (default 10; 2 with --tiny)"
    )
    ap.add_argument(
        "--frames-per-demo",
        type=float,
        default=61.0,
        help="--study-slice: mean frames of a generated demonstration (bench/results/scaling.json: 245 for 4)",
    )
    ap.add_argument(
        "--suite", default="libero_spatial", help="--study-slice: the suite whose step limit evaluation has"
    )
    ap.add_argument(
        "--finetune",
        choices=("lora", "full"),
        default="lora",
        help="--study-slice: how the backbone trains: lora (frozen, with LoRA adapters, as a study trains a real "
        "backbone) or full",
    )
    args = ap.parse_args(argv)
    if args.study_slice:
        from world_modality.sim.suites import STEP_LIMITS
        from world_modality.study.settings import BUDGETS

        args.train_batch = args.train_batch or (2 if args.tiny else BUDGETS["gpu"].batch_size)
        args.train_steps = args.train_steps or (2 if args.tiny else 10)
        if args.train_batch < 1 or args.train_steps < 1 or not args.frames_per_demo > 0:
            ap.error(
                f"need --train-batch >= 1, --train-steps >= 1, --frames-per-demo > 0; got {args.train_batch}, "
                f"{args.train_steps}, {args.frames_per_demo}"
            )
        if args.suite not in STEP_LIMITS:
            ap.error(f"--suite {args.suite!r}: expected one of {sorted(STEP_LIMITS)}")
    args.n = args.n or (5 if args.tiny else 50)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    args.image_size = args.image_size or (64 if args.tiny else 224)
    if args.n < 1 or args.warmup < 0 or args.batch < 1:
        ap.error(f"need --n >= 1, --warmup >= 0, --batch >= 1; got {args.n}, {args.warmup}, {args.batch}")
    return args


def _local_config(path: str, what: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError as e:
        raise SystemExit(f"--{what}: no readable config.json in {path!r} (local files only): {e}") from e


def qwen_config(args, token_ids: dict[str, int]):
    from transformers import Qwen2_5_VLConfig

    if args.qwen_config:
        cfg = _local_config(args.qwen_config, "qwen-config")
        if cfg.model_type != "qwen2_5_vl":
            raise SystemExit(
                f"--qwen-config {args.qwen_config!r} holds a {cfg.model_type!r} config, expected qwen2_5_vl"
            )
    else:
        cfg = Qwen2_5_VLConfig(text_config=dict(QWEN25_VL_3B_TEXT), vision_config=dict(QWEN25_VL_3B_VISION))
    # The prompt's special tokens must be the ids the model treats as image/vision tokens.
    cfg.image_token_id, cfg.video_token_id = token_ids["<|image_pad|>"], token_ids["<|video_pad|>"]
    cfg.vision_start_token_id, cfg.vision_end_token_id = token_ids["<|vision_start|>"], token_ids["<|vision_end|>"]
    return cfg


def vjepa2_config(args):
    from transformers import VJEPA2Config

    if args.vjepa2_config:
        cfg = _local_config(args.vjepa2_config, "vjepa2-config")
        if cfg.model_type != "vjepa2":
            raise SystemExit(
                f"--vjepa2-config {args.vjepa2_config!r} holds a {cfg.model_type!r} config, expected vjepa2"
            )
        return cfg
    return VJEPA2Config(**VJEPA2_VITL_256)


def tokenizer_for(args):
    """The real tokenizer when --qwen-config has one, else the project's byte-level BPE with Qwen's
    special tokens (prompt text then tokenises differently; the image tokens, the bulk, do not)."""
    from world_modality.policy.tokenizer import SPECIAL_TOKENS, build_tokenizer

    if args.qwen_config and not args.tiny:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(args.qwen_config, local_files_only=True)
            return tok, {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}, "qwen"
        except (OSError, ValueError):
            pass
    tok = build_tokenizer([INSTRUCTION])
    return tok, {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}, "project-bpe"


def build(args, device: torch.device, experiment: str = "E2"):
    """(policy, preprocessor, info): the assembled policy of the preset `experiment` as evaluation runs it, on
    `device`, its trainable parameters chosen as training chooses them; E0 builds no world encoder."""
    from transformers import Qwen2_5_VLForConditionalGeneration, VJEPA2Model

    from world_modality.config import build_config
    from world_modality.policy.backbone import QwenBackbone, build_tiny_qwen
    from world_modality.policy.factory import build_preprocessor
    from world_modality.policy.lora import apply_lora, set_trainable
    from world_modality.policy.model import PolicyShapes, WorldModalityPolicy
    from world_modality.world.encoder import WorldEncoder, build_world_encoder
    from world_modality.world.vjepa2_processing import VJEPA2Processing

    tokenizer, token_ids, tok_kind = tokenizer_for(args)
    overrides = {"image_size": args.image_size, "latent_suffix": f"m{args.frames}", "action_head": args.action_head}
    if args.study_slice and args.finetune == "lora":  # what a study's real backbone trains (study/real_models.py)
        overrides.update(freeze_backbone=True, use_lora=True)
    encoder = None
    if args.tiny:
        cfg = build_config({**overrides, "world_image_size": 64}, preset=experiment)
        backbone = build_tiny_qwen(tokenizer)
        if needs_world(cfg):
            encoder = build_world_encoder(num_frames=args.frames, image_size=64, device=device)
    else:
        dtype = torch.bfloat16
        cfg = build_config(
            {
                **overrides,
                "backbone": "qwen2.5-vl",
                "backbone_path": "random-init",
                "backbone_dtype": "bfloat16",
                "world_encoder": "vjepa2",
                "world_encoder_path": "random-init",
            },
            preset=experiment,
        )
        # Random init straight on the GPU: a 3B model initialised on the CPU takes minutes.
        with torch.device(device):
            qwen = Qwen2_5_VLForConditionalGeneration._from_config(qwen_config(args, token_ids), dtype=dtype)
            vjepa = VJEPA2Model._from_config(vjepa2_config(args), dtype=dtype) if needs_world(cfg) else None
        backbone = QwenBackbone(qwen.eval(), tokenizer, pretrained=True)
        if vjepa is not None:
            crop = int(vjepa.config.crop_size)
            encoder = WorldEncoder(
                vjepa,
                name="vjepa2",
                num_frames=args.frames,
                image_size=crop,
                seed=None,
                pretrained_path="random-init",
                processing=VJEPA2Processing.for_crop(crop),
            )
    pcfg = cfg.policy
    if pcfg.use_lora:  # as policy/factory.py's build_backbone adds them
        apply_lora(backbone.model, pcfg.resolved_lora_target(), pcfg.lora_rank, pcfg.lora_alpha)
    shapes = PolicyShapes(state_dim=8, action_dim=7, latent_dim=encoder.latent_dim if encoder is not None else 0)
    policy = WorldModalityPolicy(cfg, backbone, shapes, encoder).to(device).eval()
    set_trainable(policy, pcfg.freeze_backbone, text_loss=pcfg.lambda_text > 0)
    preprocess = build_preprocessor(cfg, policy)

    def millions(m) -> float:
        return round(sum(p.numel() for p in m.parameters()) / 1e6, 3) if m is not None else 0.0

    head_params = sum(millions(getattr(policy, n, None)) for n in ("memory_proj", "xattn", "head", "state_proj"))
    info = {
        "tokenizer": tok_kind,
        "backbone_dtype": str(backbone.dtype).removeprefix("torch."),
        "world_dtype": str(encoder.dtype).removeprefix("torch.") if encoder is not None else None,
        "world_image_size": encoder.image_size if encoder is not None else None,
        "latent_dim": shapes.latent_dim,
        "params_m": {
            "world_encoder": millions(encoder),
            "backbone": millions(backbone),
            "prophet": millions(getattr(policy, "prophet", None)),
            "head": round(head_params, 3),
        },
        "trainable_params_m": round(sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6, 3),
    }
    return policy, preprocess, info


def needs_world(cfg) -> bool:
    """The arm builds a world encoder and Prophet (the policy's own rule: memory injection or a world loss)."""
    return not cfg.policy.disable_future_injection or cfg.world.lambda_world > 0


def inputs(args, world_size: int, seed: int = 0, batch: int | None = None, size: int = 256):
    """`batch` (default --batch) observations in the dataset schema, cameras size x size (LIBERO renders 256x256),
    and the world encoder's m frames per observation."""
    rng = np.random.default_rng(seed)
    batch = args.batch if batch is None else batch
    obs = [
        {
            "observation.images.image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.images.wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=8).astype(np.float32),
            "task": INSTRUCTION,
        }
        for _ in range(batch)
    ]
    frames = rng.integers(0, 256, (batch, args.frames, size, size, 3), dtype=np.uint8)
    return obs, frames


class Timer:
    """Wall time of named sections; synchronises the GPU so each section owns its kernels."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, {p: [] for p in PARTS}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            self.sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            self.sync()
            self._last[name] = time.perf_counter() - t0
            return out

        return timed

    def start_step(self) -> None:
        self._last = {}


@torch.no_grad()
def run_steps(
    policy, preprocess, obs, frames, device: torch.device, n: int, warmup: int
) -> tuple[dict[str, float], bool]:
    """Median milliseconds per part over n policy steps after `warmup` untimed ones. A step is what
    closed-loop evaluation does per replanning: preprocess, encode the world window, predict actions
    (backbone, Prophet, then the memory, cross-attention and action head, timed as `head`). `step` is
    the wall time of the whole step, its parts' synchronisation included. A policy without memory (E0) acts
    without the world window, as PolicyRunner.act does: its world encoder and Prophet parts are 0 ms."""
    from world_modality.inference.runner import model_inputs

    timer = Timer(device)
    uses_world = policy.use_memory
    # Time the policy's own pieces in place, so the step runs exactly the evaluation code path
    # (PolicyRunner.act): camera and world frames resized as in training, the batch moved to the device.
    policy._backbone_pass = timer.wrap("backbone", policy._backbone_pass)
    policy.predict_future = timer.wrap("prophet", policy.predict_future)
    world_size = policy.cfg.data.image_size  # the world camera's training size (pipeline.py)
    window = frames if uses_world else None
    preprocess_t = timer.wrap("preprocess", lambda: model_inputs(preprocess, obs, window, world_size).to(device))
    encode_t = timer.wrap("world_encoder", policy.world_encoder.encode) if uses_world else None
    predict_t = timer.wrap("predict", policy.predict_actions)

    def step():
        batch = preprocess_t()
        if uses_world:
            batch = batch.replace(z_t=encode_t(batch.world_frames), world_frames=None)
        return predict_t(batch)

    step_t = timer.wrap("step", step)
    finite = True
    try:
        for i in range(warmup + n):
            timer.start_step()
            actions = step_t()
            # Random weights: report rather than stop on overflow; the timing stands either way.
            finite = finite and bool(torch.isfinite(actions).all())
            if i < warmup:
                continue
            last = {"world_encoder": 0.0, "prophet": 0.0, **timer._last}
            last["head"] = last.pop("predict") - last["backbone"] - last["prophet"]
            for k in PARTS:
                timer.times[k].append(last[k])
    finally:
        del policy._backbone_pass, policy.predict_future  # drop the instance overrides
    return {k: round(1000 * statistics.median(v), 3) for k, v in timer.times.items()}, finite


def median_ms(timer: Timer, name: str, fn, n: int, warmup: int) -> float:
    """Median milliseconds of n calls of fn after `warmup` untimed ones, synchronised as run_steps' parts are."""
    timed, times = timer.wrap(name, fn), []
    for i in range(warmup + n):
        timer.start_step()
        timed()
        if i >= warmup:
            times.append(timer._last[name])
    return round(1000 * statistics.median(times), 3)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def training_samples(args, policy, n: int, seed: int = 1) -> list[dict]:
    """n samples as pipeline.FrameSamples gives them to the collate: cameras at the policy's image size (the frame
    cache's), state, instruction, an action chunk and its mask, and for a world arm the cached z_t and z_{t+k}."""
    samples, _ = inputs(args, args.image_size, seed, batch=n, size=args.image_size)
    rng = np.random.default_rng(seed)
    chunk, shapes = policy.cfg.policy.chunk_size, policy.shapes
    for row, sample in enumerate(samples):
        sample["actions"] = rng.uniform(-1, 1, (chunk, shapes.action_dim)).astype(np.float32)
        sample["action_mask"] = np.ones(chunk, dtype=bool)
        sample["row"] = row
        if policy.needs_world:
            sample["z_t"] = rng.normal(size=shapes.latent_dim).astype(np.float32)
            sample["z_future"] = rng.normal(size=shapes.latent_dim).astype(np.float32)
    return samples


def optimiser_step(policy, batches: list, params: list, optimizer):
    """One optimiser update as world_modality/train.py makes it, over `batches` accumulated into one update:
    the random-shift augmentation, the policy's training loss (`policy(batch)`, the trainer's call) and its
    backward pass weighted by each batch's share, gradient clipping, AdamW's step, then the reads the trainer
    makes every step (the losses as floats, the NaN/inf check of the trainable weights). -> the losses."""
    from world_modality.optim import nonfinite_params
    from world_modality.pipeline import random_shift

    t = policy.cfg.train
    total = sum(len(b.actions) for b in batches)

    def step() -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            batch = batch.replace(images=random_shift(batch.images, t.augment_shift))
            out = policy(batch)
            (out["loss"] * (len(batch.actions) / total)).backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        values = {k: float(v.detach()) for k, v in out.items()}
        nonfinite_params(policy)
        return values

    return step


def encode_windows_ms(args, encoder, timer: Timer) -> tuple[float, int]:
    """(median ms, windows): one batch of the latent cache's encoding (encode_latents at load_or_build_cache's
    batch size), windows of m frames read at the policy's image size as the cache reads them."""
    import inspect

    from world_modality.world.latent_cache import load_or_build_cache
    from world_modality.world.latent_encoding import encode_latents

    batch = inspect.signature(load_or_build_cache).parameters["batch_size"].default
    m, size = encoder.num_frames, args.image_size
    frames = np.random.default_rng(2).integers(0, 256, (batch + m - 1, size, size, 3), dtype=np.uint8)
    rows = np.arange(batch)[:, None] + np.arange(m)[None, :]
    ms = median_ms(timer, "encode", lambda: encode_latents(frames, rows, encoder, batch, progress=False), args.n, 1)
    return ms, batch


def slice_arm(args, device: torch.device, experiment: str) -> tuple[dict, dict]:
    """One arm at real size: closed-loop chunks (run_steps), the latent cache's encoding (world arms), then
    optimiser steps of --train-batch samples, split into accumulated micro-batches halved while the GPU runs
    out of memory, and validation batches (the trainer's loss_sums). -> (figures, build()'s info)."""
    from world_modality.loader import loss_sums
    from world_modality.pipeline import make_collate

    t0 = time.perf_counter()
    policy, preprocess, info = build(args, device, experiment)
    fig = {"build_s": round(time.perf_counter() - t0, 2), "trainable_params_m": info["trainable_params_m"]}
    obs, frames = inputs(args, args.image_size)
    reset_peak(device)
    ms, fig["finite_actions"] = run_steps(policy, preprocess, obs, frames, device, args.n, args.warmup)
    fig.update(chunk_ms=ms["step"], chunk_world_encoder_ms=ms["world_encoder"], peak_gpu_mem_gib_eval=peak_gib(device))
    timer = Timer(device)
    if policy.needs_world:
        fig["encode_batch_ms"], fig["encode_batch"] = encode_windows_ms(args, policy.world_encoder, timer)
    collate = make_collate(preprocess)
    samples = training_samples(args, policy, args.train_batch)
    fig["collate_ms"] = median_ms(timer, "collate", lambda: collate(samples), args.train_steps, 1)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=policy.cfg.train.lr, weight_decay=policy.cfg.train.weight_decay)
    policy.train()
    micro, losses = args.train_batch, []
    while True:
        batches = [collate(samples[i : i + micro]) for i in range(0, len(samples), micro)]
        reset_peak(device)
        step = optimiser_step(policy, batches, params, optimizer)
        try:
            fig["train_step_ms"] = median_ms(
                timer, "train_step", lambda: losses.append(step()), args.train_steps, args.warmup
            )
        except torch.cuda.OutOfMemoryError as err:
            if micro == 1:
                raise SystemExit(
                    f"real_size --study-slice: {experiment} training runs out of GPU memory even one sample per "
                    f"micro-batch ({err}); expected a GPU that holds the weights, gradients and AdamW state."
                ) from None
        else:
            break
        # Out of the handler first: its traceback holds the failed step's activations.
        del batches, step
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        micro = (micro + 1) // 2
    fig["peak_gpu_mem_gib_train"] = peak_gib(device)
    fig["micro_batch"], fig["grad_accum_steps"] = micro, len(batches)
    fig["samples_per_s"] = float(f"{args.train_batch / (fig['train_step_ms'] / 1000):.4g}")
    fig["finite_loss"] = all(math.isfinite(v) for step_losses in losses for v in step_losses.values())
    # Validation runs the same batches without gradients, one loss_sums call per batch of --train-batch samples.
    fig["val_step_ms"] = median_ms(timer, "val_step", lambda: loss_sums(policy, batches, seed=0), args.train_steps, 1)
    return fig, info


def slice_estimates(args, arms: dict[str, dict]) -> dict:
    """The slice's flat figures (per arm with an `_E2`/`_E0` suffix) and one run's GPU hours at the study's gpu
    budget, each estimate named `_derived` with its formula over the other figures and what it assumes."""
    from world_modality.config import build_config
    from world_modality.sim.record import CONTROL_STEPS_PER_FRAME
    from world_modality.sim.suites import STEP_LIMITS
    from world_modality.study.settings import BUDGETS

    budget, cfg = BUDGETS["gpu"], build_config({})
    # As data/split.py holds out validation episodes per task.
    val_demos = max(1, round(cfg.data.val_fraction * budget.demos_per_task))
    f = {
        "budget": "gpu",
        "demos_per_task": budget.demos_per_task,
        "tasks": TASKS_PER_SUITE,
        "epochs": budget.epochs,
        "train_batch": args.train_batch,
        "frames_per_demo": args.frames_per_demo,
        "train_demos_per_task": budget.demos_per_task - val_demos,
        "val_demos_per_task": val_demos,
        "suite": args.suite,
        "eval_episodes": TASKS_PER_SUITE * STATES_PER_TASK,
        "step_limit": STEP_LIMITS[args.suite],
        "control_steps_per_frame": CONTROL_STEPS_PER_FRAME,
        "replan_every": max(1, cfg.policy.chunk_size // 2),  # PolicyRunner's default, as the study evaluates
    }
    for arm, fig in arms.items():
        f.update({f"{k}_{arm}": v for k, v in fig.items() if k not in ("encode_batch_ms", "encode_batch")})
        if "encode_batch_ms" in fig:
            f["encode_batch_ms"], f["encode_batch"] = fig["encode_batch_ms"], fig["encode_batch"]
    derived, assumptions = {}, {}

    def derive(name: str, formula: str, value: float, assumes: str) -> None:
        f[name], derived[name], assumptions[name] = round(value, 4), formula, assumes

    frames = f["demos_per_task"] * f["tasks"] * f["frames_per_demo"]
    derive(
        "train_batches_per_epoch_derived",
        "train_demos_per_task * tasks * frames_per_demo / train_batch",
        f["train_demos_per_task"] * f["tasks"] * f["frames_per_demo"] / f["train_batch"],
        "every demonstration has frames_per_demo frames, each one training sample",
    )
    derive(
        "val_batches_per_epoch_derived",
        "val_demos_per_task * tasks * frames_per_demo / train_batch",
        f["val_demos_per_task"] * f["tasks"] * f["frames_per_demo"] / f["train_batch"],
        "validation loss at every epoch end over the held-out demonstrations (the trainer's default)",
    )
    derive(
        "chunks_per_episode_derived",
        "step_limit / (control_steps_per_frame * replan_every)",
        f["step_limit"] / (f["control_steps_per_frame"] * f["replan_every"]),
        "every episode runs to the suite's step limit (a failure; a success ends sooner): an upper bound",
    )
    hours = 3_600_000  # ms per hour
    for arm in arms:
        derive(
            f"train_gpu_hours_{arm}_derived",
            f"epochs * (train_batches_per_epoch_derived * train_step_ms_{arm} "
            f"+ val_batches_per_epoch_derived * val_step_ms_{arm}) / {hours}",
            f["epochs"]
            * (
                f["train_batches_per_epoch_derived"] * f[f"train_step_ms_{arm}"]
                + f["val_batches_per_epoch_derived"] * f[f"val_step_ms_{arm}"]
            )
            / hours,
            "the median step of the slice holds for every step; batches load in parallel with training",
        )
        derive(
            f"eval_gpu_hours_{arm}_derived",
            f"eval_episodes * chunks_per_episode_derived * chunk_ms_{arm} / {hours}",
            f["eval_episodes"] * f["chunks_per_episode_derived"] * f[f"chunk_ms_{arm}"] / hours,
            "policy time only, one observation per call: the simulator's CPU time is not counted",
        )
    if "encode_batch_ms" in f:
        derive(
            "encode_gpu_hours_derived",
            f"demos_per_task * tasks * frames_per_demo / encode_batch * encode_batch_ms / {hours}",
            frames / f["encode_batch"] * f["encode_batch_ms"] / hours,
            "one window per dataset frame, encoded once per dataset and shared by every world arm and seed on it",
        )
    for arm in arms:
        parts = [f"train_gpu_hours_{arm}_derived", f"eval_gpu_hours_{arm}_derived"]
        if "encode_batch_ms" in arms[arm]:  # an upper bound: later runs on the dataset reuse the cache
            parts.insert(0, "encode_gpu_hours_derived")
        derive(
            f"run_gpu_hours_{arm}_derived",
            " + ".join(parts),
            sum(f[p] for p in parts),
            "one run trains and evaluates once; a world arm's first run on a dataset also encodes its latent cache",
        )
    return {**f, "derived": derived, "derived_assumptions": assumptions}


def slice_table(s: dict) -> str:
    rows = [
        f"{'arm':<5}{'train step ms':>15}{'samples/s':>11}{'micro-batch':>13}{'val ms':>10}{'chunk ms':>10}"
        f"{'peak train GiB':>16}{'GPU h/run':>11}"
    ]
    for arm in s["arms"]:
        mem = s[f"peak_gpu_mem_gib_train_{arm}"]
        rows.append(
            f"{arm:<5}{s[f'train_step_ms_{arm}']:>15.2f}{s[f'samples_per_s_{arm}']:>11.2f}"
            f"{s[f'micro_batch_{arm}']:>13}{s[f'val_step_ms_{arm}']:>10.2f}{s[f'chunk_ms_{arm}']:>10.2f}"
            f"{'-' if mem is None else f'{mem:.2f}':>16}{s[f'run_gpu_hours_{arm}_derived']:>11.3f}"
        )
    if "encode_batch_ms" in s:
        rows.append(f"latent cache: {s['encode_batch']} windows in {s['encode_batch_ms']:.2f} ms (world arms)")
    rows.append(
        f"GPU h/run (derived, gpu budget: {s['demos_per_task']} demos x {s['tasks']} tasks, {s['epochs']} epochs, "
        f"batch {s['train_batch']}, {s['eval_episodes']} episodes): encode + train + evaluate, formulas in 'derived'"
    )
    return "\n".join(rows)


def study_slice(args, device: torch.device, argv) -> dict:
    arms, info = {}, {}
    for experiment in ARMS:
        arms[experiment], info[experiment] = slice_arm(args, device, experiment)
        gc.collect()  # the arm's policy and optimiser state go before the next arm is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    e2 = info["E2"]
    return {
        "gpu": device.type == "cuda",
        "mode": "study_slice",
        "size": "tiny" if args.tiny else "real",
        "measured": True,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "models": models_text(args),
        "weights": "random init",
        "arms": list(ARMS),
        "finetune": args.finetune,
        "image_size": args.image_size,
        "world_image_size": e2["world_image_size"],
        "frames": args.frames,
        "action_head": args.action_head,
        "n": args.n,
        "warmup": args.warmup,
        "train_steps": args.train_steps,
        "backbone_dtype": e2["backbone_dtype"],
        "world_dtype": e2["world_dtype"],
        "params_m": e2["params_m"],
        **slice_estimates(args, arms),
        "torch": torch.__version__,
        **provenance_fields(argv),
    }


def write_results(out: Path, figures: dict, study: bool) -> None:
    """Write one mode's figures to `out`, keeping the other mode's: the inference step at the top level, the study
    slice under "study_slice" with its formulas in the file's "derived" as "study_slice.<name>" (where
    bench/_common.py's check of derived figures looks for a nested figure's formula)."""
    old = json.loads(out.read_text()) if out.exists() else {}
    top = {k: v for k, v in old.items() if k != SLICE}
    nested = dict(old.get(SLICE) or {})
    for meta in META:
        entries = top.pop(meta, None) or {}
        top[meta] = {k: v for k, v in entries.items() if not k.startswith(f"{SLICE}.")}
        nested[meta] = {k.removeprefix(f"{SLICE}."): v for k, v in entries.items() if k.startswith(f"{SLICE}.")}
    if study:
        nested = figures
    else:
        top = figures
    data = {k: v for k, v in top.items() if k not in META}
    if any(k not in META for k in nested):
        data[SLICE] = {k: v for k, v in nested.items() if k not in META}
    for meta in META:
        merged = {**(top.get(meta) or {}), **{f"{SLICE}.{k}": v for k, v in (nested.get(meta) or {}).items()}}
        if merged:
            data[meta] = merged
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")


def models_text(args) -> str:
    if args.tiny:
        return "tiny Qwen2.5-VL + tiny VJEPA2"
    qwen, vjepa = args.qwen_config or "3B config", args.vjepa2_config or "ViT-L 256 config"
    return f"Qwen2.5-VL ({qwen}) + V-JEPA 2 ({vjepa})"


def table(ms: dict[str, float], info: dict, mem: dict | None) -> str:
    rows = [f"{'part':<15}{'median ms':>12}{'params (M)':>14}"]
    for k in PARTS:
        params = info["params_m"].get(k)
        rows.append(f"{k:<15}{ms[k]:>12.2f}{'' if params is None else f'{params:>14.1f}'}")
    if mem:
        rows.append(f"peak GPU memory {mem['peak_gpu_mem_gib']:.2f} GiB (weights {mem['weights_gib']:.2f} GiB)")
    return "\n".join(rows)


def provenance_fields(argv) -> dict:
    """The commit the figures come from and the command that measured them."""
    from world_modality.provenance import code_commit

    args = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join([".venv/bin/python", "bench/real_size.py", *args])
    return {"commit": code_commit(("world_modality", "bench")), "command": command}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.tiny:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print(
            "real_size: no CUDA GPU found; the real-size benchmark needs one (--tiny runs the same code "
            "on CPU with the tiny configs). Nothing measured."
        )
        mode = SLICE if args.study_slice else "real"
        print(json.dumps({"gpu": False, "mode": mode, "measured": False, "reason": "no CUDA GPU"}))
        return 0
    else:
        device = torch.device("cuda")
        torch.cuda.reset_peak_memory_stats(device)
    out = Path(args.out) if args.out else RESULT_PATH
    if args.study_slice:
        result = study_slice(args, device, argv)
        print(slice_table(result))
        if not args.tiny:
            write_results(out, result, study=True)
            print(f"wrote {out} ({SLICE})")
        print(json.dumps(result))
        return 0
    t0 = time.perf_counter()
    policy, preprocess, info = build(args, device)
    build_s = time.perf_counter() - t0
    obs, frames = inputs(args, policy.world_encoder.image_size)
    mem = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        weights = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    ms, finite = run_steps(policy, preprocess, obs, frames, device, args.n, args.warmup)
    if device.type == "cuda":
        mem = {
            "weights_gib": round(weights / 2**30, 3),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        }
    prompt_tokens = int(preprocess(obs[:1]).input_ids.shape[1])
    result = {
        "gpu": device.type == "cuda",
        "mode": "tiny" if args.tiny else "real",
        "measured": True,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "models": models_text(args),
        "weights": "random init",
        "batch": args.batch,
        "image_size": args.image_size,
        "frames": args.frames,
        "action_head": args.action_head,
        "n": args.n,
        "warmup": args.warmup,
        "prompt_tokens": prompt_tokens,
        "build_s": round(build_s, 2),
        "median_ms": ms,
        "finite_actions": finite,
        **info,
        **(mem or {}),
        # head is the one part not timed on its own: predict_actions minus backbone and Prophet, per step.
        "derived": {
            "median_ms.head": "median over steps of (predict_actions - backbone - prophet) ms: "
            "memory, cross-attention, action head and their glue"
        },
        "torch": torch.__version__,
        **provenance_fields(argv),
    }
    print(table(ms, info, mem))
    if not args.tiny:
        write_results(out, result, study=False)
        print(f"wrote {out}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
