"""`world-modality serve`'s flags and entry; nothing heavy is imported until the command runs."""

from __future__ import annotations

import argparse

DEVICE_HELP = "where the policy runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default: 'auto')"


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    from ..config import CLOSED_LOOP_MEMORY_MODES

    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on, 0 for a free one (default: 8000)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface (default: '127.0.0.1')"
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--batch_window_ms",
        type=float,
        default=5.0,
        help="requests arriving within this many ms of the first go through the model as one batch, >= 0 (default: 5)",
    )
    p.add_argument(
        "--memory",
        default=None,
        choices=CLOSED_LOOP_MEMORY_MODES,
        help="memory mode (default: the one the policy trained with)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise stream (default: 0)")


def run(args) -> int:
    from ..config import ConfigError
    from ..policy.device import resolve_device
    from .server import serve_checkpoint

    resolve_device(args.device)  # a bad name exits 2 before the checkpoint loads
    if args.batch_window_ms < 0 or not 0 <= args.port <= 65535:
        raise ConfigError("--batch_window_ms must be >= 0 and --port in [0, 65535].")
    serve_checkpoint(
        args.checkpoint,
        host=args.host,
        port=args.port,
        device=args.device,
        batch_window_ms=args.batch_window_ms,
        memory_mode=args.memory,
        seed=args.seed,
    )
    return 0
