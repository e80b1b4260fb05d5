"""The policy server on the loopback interface: the wire format, a served chunk equal to the local runner's bit for
bit, concurrent clients batched, bad requests refused while serving goes on, a lost server reported."""

import json
import threading
import urllib.request

import numpy as np
import pytest

from world_modality.data.fixture import make_fixture_dataset
from world_modality.inference import wire
from world_modality.inference.remote import WORLD_KEY, PolicyClient, RequestRefused, ServerLost
from world_modality.inference.runner import PolicyRunner
from world_modality.serve.batched import BatchedPolicy
from world_modality.serve.server import PolicyServer

SIZE = 32
CAMERAS = ("observation.images.image", "observation.images.wrist_image")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import tiny_config
    from world_modality.train import train

    root = tmp_path_factory.mktemp("serve")
    data = make_fixture_dataset(root / "data", n_episodes=4, length=12, image_size=SIZE, seed=1)
    return train(tiny_config(data, root / "run", max_epochs=1), progress=False)


def observation(seed: int, num_frames: int, task: str = "move the block") -> dict:
    rng = np.random.default_rng(seed)
    obs = {k: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in CAMERAS}
    obs.update(
        {
            "observation.state": rng.normal(size=8).astype(np.float32),
            "task": task,
            WORLD_KEY: rng.integers(0, 256, (num_frames, SIZE, SIZE, 3), dtype=np.uint8),
        }
    )
    return obs


@pytest.fixture()
def served(tiny_run):
    """A server on a free loopback port (seed 0), and a local runner with the same seed to compare with."""
    server = PolicyServer(BatchedPolicy(PolicyRunner(tiny_run, device="cpu", seed=0)), port=0, batch_window_ms=200)
    port = server.start()
    yield server, port, PolicyRunner(tiny_run, device="cpu", seed=0)
    server.stop()


def local_chunk(runner: PolicyRunner, obs: dict) -> np.ndarray:
    return runner.act({k: v for k, v in obs.items() if k != WORLD_KEY}, obs[WORLD_KEY])


def test_wire_format_is_openpis_plain_maps():
    import msgpack

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(wire.packb({"a": x, "s": np.int64(7)}), raw=False)
    assert raw["a"] == {b"__ndarray__": True, b"data": x.tobytes(), b"dtype": "<f4", b"shape": [2, 3]}
    assert raw["s"] == {b"__npgeneric__": True, b"data": 7, b"dtype": "<i8"}
    back = wire.unpackb(wire.packb({"a": x, "s": np.int64(7), "t": "text"}))
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], x) and back["a"].flags.writeable
    assert back["s"] == 7 and back["s"].dtype == np.int64 and back["t"] == "text"
    with pytest.raises(TypeError, match="complex"):
        wire.packb(np.zeros(2, np.complex64))


def test_served_chunk_equals_the_local_runner_bit_for_bit(served):
    server, port, local = served
    with PolicyClient(port=port) as client:
        meta = client.get_server_metadata()
        assert meta["chunk_size"] == local.chunk_size and meta["num_frames"] == local.num_frames
        for seed in (0, 1):  # the second request continues the same noise stream on both sides
            obs = observation(seed, local.num_frames)
            reply = client.infer(obs)
            expected = local_chunk(local, obs)
            assert reply["actions"].dtype == np.float32 and reply["actions"].shape == expected.shape
            assert np.array_equal(reply["actions"], expected)
            timing = reply["server_timing"]
            assert timing["batch_size"] == 1 and timing["infer_ms"] > 0 and timing["total_ms"] >= timing["infer_ms"]


def test_two_clients_at_once_are_answered_in_one_batch(served):
    server, port, local = served
    obs = [observation(10 + i, local.num_frames, task=t) for i, t in enumerate(("open the drawer", "move it"))]
    clients = [PolicyClient(port=port) for _ in obs]
    replies = [None, None]
    gate = threading.Barrier(2)

    def ask(i):
        gate.wait()
        replies[i] = clients[i].infer(obs[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in clients:
        c.close()
    assert all(r is not None and r["server_timing"]["batch_size"] == 2 for r in replies)
    # Each answer of the batch is the chunk its observation gets alone (the tiny policy's head draws no noise).
    for r, o in zip(replies, obs):
        np.testing.assert_allclose(r["actions"], local_chunk(local, o), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(replies[0]["actions"], replies[1]["actions"])
    # The batch is counted by size, over plain HTTP beside the WebSocket.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as answer:
        assert json.loads(answer.read()) == {"requests": 2, "batches": 1, "batch_sizes": {"2": 1}}


def test_a_zero_batch_window_answers_concurrent_clients_one_by_one_bit_for_bit(tiny_run):
    server = PolicyServer(BatchedPolicy(PolicyRunner(tiny_run, device="cpu", seed=0)), port=0, batch_window_ms=0)
    port = server.start()
    local = PolicyRunner(tiny_run, device="cpu", seed=0)
    try:
        obs = [observation(40 + i, local.num_frames) for i in range(3)]
        clients = [PolicyClient(port=port) for _ in obs]
        replies = [None] * len(obs)
        gate = threading.Barrier(len(obs))

        def ask(i):
            gate.wait()
            replies[i] = clients[i].infer(obs[i])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(obs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for c in clients:
            c.close()
        assert server.stats() == {"requests": 3, "batches": 3, "batch_sizes": {"1": 3}}
        for r, o in zip(replies, obs):
            np.testing.assert_array_equal(r["actions"], local_chunk(local, o))
    finally:
        server.stop()


def test_a_batch_acts_like_its_requests_one_by_one(tiny_run):
    runner = PolicyRunner(tiny_run, device="cpu", seed=0)
    assert type(runner.policy.head).__name__ != "FlowHead"  # else the noise would differ between the two paths
    policy = BatchedPolicy(runner)
    obs = [policy.check(observation(20 + i, runner.num_frames)) for i in range(3)]
    stacked = policy.act_batch(obs)
    assert len(stacked) == 3
    for chunk, o in zip(stacked, obs):
        np.testing.assert_allclose(chunk, runner.act(o.obs, o.window), rtol=1e-5, atol=1e-6)
    # Shapes that differ cannot be stacked: such requests run one by one.
    odd = policy.check({**observation(30, runner.num_frames), CAMERAS[0]: np.zeros((16, 16, 3), np.uint8)})
    mixed = policy.act_batch([obs[0], odd])
    np.testing.assert_array_equal(mixed[0], runner.act(obs[0].obs, obs[0].window))


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda o: o.pop("observation.state"), "observation.state"),
        (lambda o: o.update({CAMERAS[0]: np.zeros((SIZE, SIZE), np.uint8)}), "H, W, 3"),
        (lambda o: o["observation.state"].__setitem__(0, np.nan), "NaN"),
        (lambda o: o.update({WORLD_KEY: o[WORLD_KEY][:1]}), WORLD_KEY),
        (lambda o: o.pop("task"), "task"),
    ],
)
def test_a_malformed_request_gets_an_error_and_serving_goes_on(served, break_it, message):
    server, port, local = served
    with PolicyClient(port=port) as client:
        bad = observation(3, local.num_frames)
        break_it(bad)
        with pytest.raises(RequestRefused, match=message):
            client.infer(bad)
        assert client.infer(observation(4, local.num_frames))["actions"].shape[0] == local.chunk_size


def test_unreadable_bytes_get_an_error_reply(served):
    from websockets.sync.client import connect

    server, port, local = served
    with connect(f"ws://127.0.0.1:{port}") as ws:
        assert wire.unpackb(ws.recv())["chunk_size"] == local.chunk_size  # metadata first
        ws.send(b"\xc1not msgpack")
        assert ws.recv().startswith("bad request: ")  # a text frame, as openpi's server sends an error
        ws.send("{}")  # a text frame is no request either
        assert ws.recv() == "bad request: a request is one msgpack message in a binary frame, got a text frame."
        ws.send(wire.packb(observation(5, local.num_frames)))
        assert "actions" in wire.unpackb(ws.recv())


def test_a_killed_server_raises_server_lost_after_retries(tiny_run):
    server = PolicyServer(BatchedPolicy(PolicyRunner(tiny_run, device="cpu")), port=0)
    port = server.start()
    client = PolicyClient(port=port, retries=2, backoff_s=0.01)
    obs = observation(6, server.policy.runner.num_frames)
    assert "actions" in client.infer(obs)
    server.stop()
    with pytest.raises(ServerLost, match=r"3 tries failed"):
        client.infer(obs)
    with pytest.raises(ServerLost):
        PolicyClient(port=port, retries=1, backoff_s=0.01)


def test_serve_command_answers_until_killed(tiny_run):
    """`world-modality serve` in its own process: its log names the port, a client is answered, and once the
    process is killed the client's retries end in ServerLost."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "world_modality.cli",
            "serve",
            "--checkpoint",
            str(tiny_run),
            "--port",
            "0",
            "--device",
            "cpu",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        for line in proc.stderr:  # the log line naming the bound port
            found = re.search(r"on ws://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "the server never said where it listens"
        client = PolicyClient(port=port, retries=2, backoff_s=0.05)
        obs = observation(7, client.get_server_metadata()["num_frames"])
        assert client.infer(obs)["actions"].shape[0] == client.get_server_metadata()["chunk_size"]
        proc.kill()
        proc.wait(30)
        with pytest.raises(ServerLost, match="policy server ws://127.0.0.1"):
            client.infer(obs)
    finally:
        proc.kill()
        proc.wait(30)


def test_unknown_device_exits_2_before_loading(tmp_path, capsys):
    from world_modality.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "missing"), "--device", "tpu"]) == 2
    assert "'tpu'" in capsys.readouterr().err
