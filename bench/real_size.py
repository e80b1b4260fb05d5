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
those medians (formulas under "derived"); its figures go under "study_slice" in the results file. The mode lives
in bench/_study_slice.py, which also writes that file for both modes.

Without a GPU (and without --tiny) it says so and exits 0. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/real_size.py` from a clone without an install
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:  # loaded by its path (the tests): its --study-slice module sits beside it
    sys.path.append(str(ROOT / "bench"))
RESULT_PATH = ROOT / "bench" / "results" / "real_size.json"

# The models and inputs timed here.
from _real_models import build, inputs  # noqa: E402

PARTS = ("preprocess", "world_encoder", "backbone", "prophet", "head", "step")


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
    from _study_slice import SLICE, slice_table, study_slice, write_results

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
        # What the slice reuses of this script, passed in: _study_slice never imports it.
        rs = SimpleNamespace(
            build=build,
            inputs=inputs,
            run_steps=run_steps,
            Timer=Timer,
            models_text=models_text,
            provenance_fields=provenance_fields,
        )
        result = study_slice(rs, args, device, argv)
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
