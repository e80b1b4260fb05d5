"""`world-modality serve`: one policy loaded once, answering action-chunk requests over WebSocket in openpi's protocol.
On connect the server sends its metadata; each client message is an observation (this project's keys or openpi's
LIBERO example's, `openpi_keys.py`), each reply {"actions": (chunk, action_dim) float32, "server_timing": {...}}, or
for a request it cannot answer a text frame naming why (as openpi's server sends its errors, so openpi's client
raises on it; here the connection stays open). Requests arriving within `batch_window_ms` of each other go through
the model as one batch. `GET /healthz` answers OK; `GET /stats` answers JSON counts of the batches run so far by
size (requests, batches, batch_sizes), and stopping logs them. Each request is checked field by field against what
the metadata advertises (`checks.py`) before the model thread sees it, and a message longer than the advertised
`max_message_bytes` closes its connection (WebSocket code 1009) unread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import http
import json
import logging
import socket
import threading
import time
from collections import Counter

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..config import ConfigError
from ..inference import wire
from ..inference.remote import RESET_KEY
from .batched import BadRequest, BatchedPolicy

log = logging.getLogger(__name__)


def listen_error(host: str, port: int, err: OSError) -> ConfigError:
    """The one-line refusal of an address the server cannot listen on."""
    if err.errno == errno.EADDRINUSE:
        return ConfigError(
            f"--port {port} on {host} is already in use ({err.strerror or err}); stop what listens there, "
            f"or choose another --port (0: any free port)."
        )
    return ConfigError(
        f"cannot listen on {host}:{port} ({err}); expected --host to be an address of this machine "
        f"(127.0.0.1, or 0.0.0.0 for every interface) and --port one it may open (0: any free port)."
    )


def check_can_listen(host: str, port: int) -> None:
    """ConfigError unless `host`:`port` can be bound now, tried as asyncio binds it (SO_REUSEADDR, every address
    `host` resolves to): before the checkpoint loads, so a busy port costs no wait."""
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as err:
        raise listen_error(host, port, err) from None


class PolicyServer:
    """Serves a `BatchedPolicy`. `run()` blocks (the command line); `start()` serves from a background thread
    and returns the bound port (tests, benchmarks), `stop()` closes every connection and the listening socket."""

    def __init__(
        self,
        policy: BatchedPolicy,
        host: str = "127.0.0.1",
        port: int = 0,
        batch_window_ms: float = 5.0,
        max_batch: int = 16,
    ):
        self.policy, self.host, self.port = policy, host, port
        self.batch_window_s, self.max_batch = batch_window_ms / 1000.0, max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: Exception | None = None  # why `start()`'s thread could not serve
        self.batch_sizes: Counter[int] = Counter()  # batches run so far, by how many requests each held
        # The model runs on one worker thread, so the event loop keeps accepting (and batching) meanwhile.
        self._model = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")

    # --- life cycle -------------------------------------------------------------------------------------------
    def run(self) -> None:
        asyncio.run(self._main())

    def start(self, timeout: float = 30.0) -> int:
        self._thread = threading.Thread(target=self._run_in_thread, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the policy server did not start listening in time")
        if self._error is not None:
            raise self._error
        return self.port

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except Exception as err:  # noqa: BLE001 -- raised again by start(), in the caller's thread
            self._error = err
            self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():  # once is enough
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._model.shutdown(wait=True)

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        batcher = asyncio.create_task(self._batcher())
        try:
            # A message past max_size closes its connection (code 1009, the limit named) before it is read.
            server = await serve(
                self._handle,
                self.host,
                self.port,
                compression=None,
                max_size=self.policy.max_message_bytes,
                process_request=self._health,
            )
        except OSError as err:
            batcher.cancel()
            raise listen_error(self.host, self.port, err) from None
        self.port = next(iter(server.sockets)).getsockname()[1]
        log.info("serving %s on ws://%s:%d", self.policy.runner.checkpoint, self.host, self.port)
        self._ready.set()
        await self._stopping.wait()
        server.close()
        await server.wait_closed()
        batcher.cancel()
        log.info("stopped; %s", json.dumps(self.stats()))

    def stats(self) -> dict:
        """The batches run so far: requests answered, batches, and how many batches held each number of requests."""
        sizes = dict(self.batch_sizes)
        return {
            "requests": sum(k * v for k, v in sizes.items()),
            "batches": sum(sizes.values()),
            "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
        }

    def _health(self, connection: ServerConnection, request):
        """Plain HTTP GET /healthz answers OK (as openpi's server does) and GET /stats the batch counts (`stats`);
        everything else is the WebSocket."""
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if request.path == "/stats":
            return connection.respond(http.HTTPStatus.OK, json.dumps(self.stats()) + "\n")
        return None

    # --- requests ---------------------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        await ws.send(wire.packb(self.policy.metadata()))
        try:
            async for message in ws:
                arrived = time.perf_counter()
                try:
                    if isinstance(message, str):
                        raise BadRequest("a request is one msgpack message in a binary frame, got a text frame.")
                    message = wire.unpackb(message)
                    if isinstance(message, dict) and RESET_KEY in message:
                        reset = self.policy.check_reset(message)
                    else:
                        request = self.policy.check(message)
                except Exception as err:  # noqa: BLE001 -- unreadable msgpack included; the connection stays open
                    await ws.send(f"bad request: {err}")
                    continue
                if isinstance(message, dict) and RESET_KEY in message:
                    # On the model's thread: an episode's state is swapped into the runner there.
                    try:
                        await self._loop.run_in_executor(self._model, self.policy.reset_episode, *reset)
                        reply = {RESET_KEY: reset[0]}
                    except Exception as err:  # noqa: BLE001 -- answered; serving goes on
                        reply = f"reset failed: {type(err).__name__}: {err}"
                    await ws.send(reply if isinstance(reply, str) else wire.packb(reply))
                    continue
                done = self._loop.create_future()
                await self._queue.put((request, done, arrived))
                reply = await done
                await ws.send(reply if isinstance(reply, str) else wire.packb(reply))
        except ConnectionClosed:
            pass

    async def _batcher(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = self._loop.time() + self.batch_window_s
            while len(batch) < self.max_batch:
                left = deadline - self._loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            started = time.perf_counter()
            try:
                chunks = await self._loop.run_in_executor(self._model, self.policy.act_batch, [b[0] for b in batch])
                error = None
            except Exception as err:  # a failure of the model answers every request of the batch, then serving goes on
                log.exception("inference failed for a batch of %d", len(batch))
                chunks, error = None, f"inference failed: {type(err).__name__}: {err}"
            finished = time.perf_counter()
            infer_ms = (finished - started) * 1000.0
            self.batch_sizes[len(batch)] += 1
            latencies = []
            for i, (_, done, arrived) in enumerate(batch):
                latency = (finished - arrived) * 1000.0
                latencies.append(latency)
                timing = {
                    "infer_ms": infer_ms,
                    "queue_ms": (started - arrived) * 1000.0,
                    "total_ms": latency,
                    "batch_size": len(batch),
                }
                if error or isinstance(chunks[i], BadRequest):
                    reply = error or f"bad request: {chunks[i]}"  # sent as text: openpi's client raises on it
                else:
                    reply = {"actions": chunks[i], "server_timing": timing}
                if not done.done():  # its client may have gone meanwhile
                    done.set_result(reply)
            log.info(
                "batch of %d: infer %.1f ms, request latency %s ms",
                len(batch),
                infer_ms,
                " ".join(f"{x:.1f}" for x in latencies),
            )


def serve_checkpoint(
    checkpoint,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    batch_window_ms: float = 5.0,
    memory_mode: str | None = None,
    seed: int = 0,
) -> None:
    """The command line's `serve`: load the checkpoint once, serve until interrupted."""
    from ..inference.runner import PolicyRunner

    check_can_listen(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runner = PolicyRunner(checkpoint, memory_mode=memory_mode, seed=seed, device=device)
    server = PolicyServer(BatchedPolicy(runner), host=host, port=port, batch_window_ms=batch_window_ms)
    try:
        server.run()
    except KeyboardInterrupt:
        log.info("stopped")
