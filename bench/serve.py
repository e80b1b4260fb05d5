"""`world-modality serve` with the embedded default's tiny E2 on the CPU. Requests: requests/s and latency of one
server process asked by 1, 2 and 4 concurrent clients (no simulator), beside the same calls made locally
(`PolicyRunner.act`). Closed loop (serve_closed_loop.py): LIBERO episodes per hour with 1, 2 and 4 simulator
workers each loading its own policy vs all asking one server, outcome agreement and the server's batch sizes.

    .venv/bin/python bench/serve.py                        # 40 requests per client; 8 episodes of 120 steps
    .venv/bin/python bench/serve.py --quick                # 8 requests; 4 episodes of 16 steps
    .venv/bin/python bench/serve.py --part requests        # or closed_loop: one part only
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, emit, median, tiny_checkpoint


def observation(size: int, m: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    img = lambda: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # noqa: E731
    return {
        "observation.images.image": img(),
        "observation.images.wrist_image": img(),
        "observation.state": rng.normal(size=8).astype(np.float32),
        "task": "move the block to the left",
        "world_frames": np.stack([img() for _ in range(m)]),
    }


def start_server(ckpt: Path, window_ms: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "world_modality.cli",
            "serve",
            "--checkpoint",
            str(ckpt),
            "--port",
            "0",
            "--device",
            "cpu",
            "--batch_window_ms",
            str(window_ms),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        # as many torch threads as the local arm, so the two compare like for like
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    for line in proc.stderr:
        found = re.search(r"on ws://127\.0\.0\.1:(\d+)", line)
        if found:
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(found.group(1))
    raise RuntimeError(f"the server exited ({proc.wait()}) before listening")


def run_clients(port: int, n: int, calls: int, warmup: int, obs: list[dict]) -> dict:
    from world_modality.inference.remote import PolicyClient

    clients = [PolicyClient(port=port) for _ in range(n)]
    for c in clients:
        for _ in range(warmup):
            c.infer(obs[0])
    latencies: list[list[float]] = [[] for _ in range(n)]
    batches: list[int] = []
    gate = threading.Barrier(n + 1)

    def ask(i):
        gate.wait()
        for k in range(calls):
            t0 = time.perf_counter()
            reply = clients[i].infer(obs[(i + k) % len(obs)])
            latencies[i].append(time.perf_counter() - t0)
            batches.append(reply["server_timing"]["batch_size"])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    flat = [x for xs in latencies for x in xs]
    return {
        "requests_per_s": round(n * calls / wall, 2),
        "median_ms": round(1e3 * median(flat), 2),
        "p90_ms": round(1e3 * float(np.percentile(flat, 90)), 2),
        "mean_batch_size": round(float(np.mean(batches)), 2),
    }


def request_part(ckpt: Path, args) -> tuple[list[str], dict]:
    from world_modality.inference.runner import PolicyRunner

    runner = PolicyRunner(ckpt, device="cpu")
    obs = [observation(runner.cfg.data.image_size, runner.num_frames, s) for s in range(4)]
    for _ in range(args.warmup):
        runner.act({k: v for k, v in obs[0].items() if k != "world_frames"}, obs[0]["world_frames"])
    local = []
    for k in range(args.calls):
        o = obs[k % len(obs)]
        t0 = time.perf_counter()
        runner.act({k: v for k, v in o.items() if k != "world_frames"}, o["world_frames"])
        local.append(time.perf_counter() - t0)
    del runner
    proc, port = start_server(ckpt, args.batch_window_ms)
    try:
        served = {n: run_clients(port, n, args.calls, args.warmup, obs) for n in (1, 2, 4)}
    finally:
        proc.kill()
        proc.wait()
    local_row = {
        "requests_per_s": round(len(local) / sum(local), 2),
        "median_ms": round(1e3 * median(local), 2),
        "p90_ms": round(1e3 * float(np.percentile(local, 90)), 2),
        "mean_batch_size": 1.0,
    }
    rows = {"local": local_row, **{f"served_{n}_clients": r for n, r in served.items()}}
    table = [
        f"policy server, tiny E2 on the CPU ({torch.get_num_threads()} torch threads per process), "
        f"{args.calls} requests per client, batch window {args.batch_window_ms} ms",
        f"{'setup':<18} {'requests/s':>10} {'median ms':>10} {'p90 ms':>8} {'mean batch':>10}",
        *(
            f"{k:<18} {r['requests_per_s']:10.2f} {r['median_ms']:10.1f} {r['p90_ms']:8.1f} "
            f"{r['mean_batch_size']:10.2f}"
            for k, r in rows.items()
        ),
    ]
    figures = {
        **rows,
        "calls_per_client": args.calls,
        "batch_window_ms": args.batch_window_ms,
        "image_size": obs[0]["observation.images.image"].shape[0],
    }
    return table, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40, help="timed requests per client")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch_window_ms", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="8 timed requests per client, 1 warm-up")
    ap.add_argument("--part", choices=("all", "requests", "closed_loop"), default="all")
    ap.add_argument("--episodes", type=int, default=8, help="closed loop: initial states 0..n-1 per setting")
    ap.add_argument("--max-steps", type=int, default=120, help="closed loop: control steps per episode")
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.calls, args.warmup, args.episodes, args.max_steps = 8, 1, 4, 16
    command = " ".join([".venv/bin/python", "bench/serve.py", *sys.argv[1:]])
    table, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp), "E2")
        if args.part in ("all", "requests"):
            table, figures = request_part(ckpt, args)
        if args.part in ("all", "closed_loop"):
            from serve_closed_loop import closed_loop

            t0 = time.perf_counter()
            proc, port = start_server(ckpt, args.batch_window_ms)
            server_start = time.perf_counter() - t0
            try:
                lines, loop = closed_loop(
                    ckpt, Path(tmp), port, args.episodes, args.suite, args.task, args.max_steps or None
                )
            finally:
                proc.kill()
                proc.wait()
            table += ["", *lines]
            figures["closed_loop"] = {**loop, "server_start_s_untimed": round(server_start, 2)}
    figures.update(
        command=command,
        torch_threads_server=torch.get_num_threads(),
        note=f"this machine's {os.cpu_count()} cores are shared by the server, the simulator workers (one torch "
        "thread each) and other jobs, so 4 workers oversubscribe them; loopback WebSocket, msgpack numpy",
    )
    emit("serve", table, figures, None, args.out)


if __name__ == "__main__":
    main()
