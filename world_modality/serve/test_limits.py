"""What one request may hold: each field is checked against what the checkpoint expects and advertises before the
model thread sees it, a refusal names the field, what was received and the limit, and no request can hold up the
others. Every client talks to 127.0.0.1 with a bounded number of requests and a timeout on every reply."""

import threading
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from world_modality.inference import wire
from world_modality.inference.remote import EPISODE_KEY, RESET_KEY, STEP_KEY, WORLD_KEY, PolicyClient, RequestRefused
from world_modality.inference.runner import PolicyRunner
from world_modality.serve.batched import BatchedPolicy
from world_modality.serve.checks import MAX_INSTRUCTION_CHARS, SEED_MAX
from world_modality.serve.server import PolicyServer
from world_modality.serve.test_serve import CAMERAS, SIZE, observation, tiny_run  # noqa: F401 (the module's fixture)

REPLY_S = 20  # far above a refusal's time; the long instruction used to hold the model thread for minutes


@pytest.fixture(scope="module")
def served(tiny_run):  # noqa: F811
    server = PolicyServer(BatchedPolicy(PolicyRunner(tiny_run, device="cpu", seed=0)), port=0, batch_window_ms=0)
    port = server.start()
    yield server, port
    server.stop()


def ask(port: int, message: dict, timeout: float = REPLY_S) -> dict | str:
    """One message on a fresh connection; the reply, read within `timeout` seconds: a map, or an error's text
    (a text frame, as openpi's server sends an error)."""
    with connect(f"ws://127.0.0.1:{port}", max_size=None, open_timeout=10) as ws:
        wire.unpackb(ws.recv(timeout=timeout))  # the metadata
        ws.send(wire.packb(message))
        reply = ws.recv(timeout=timeout)
        return reply if isinstance(reply, str) else wire.unpackb(reply)


def test_the_metadata_advertises_the_limits(served):
    server, port = served
    with PolicyClient(port=port) as client:
        meta = client.get_server_metadata()
    assert meta["state_dim"] == 8 and meta["max_instruction_chars"] == MAX_INSTRUCTION_CHARS
    assert meta["render_sizes"] == {k: [SIZE, SIZE] for k in CAMERAS}
    # Twice the advertised arrays (two cameras and the world window) beside the slack.
    arrays = 2 * SIZE * SIZE * 3 + meta["num_frames"] * SIZE * SIZE * 3
    assert meta["max_message_bytes"] == (4 << 20) + 2 * arrays


@pytest.mark.parametrize(
    "change, needles",
    [
        (
            {"observation.state": np.zeros(3, np.float32)},
            ["'observation.state' must be a vector of 8 numbers (the checkpoint's state dimension)", "(3,)"],
        ),
        (
            {"observation.state": "0 0 0"},
            ["'observation.state' must be a vector of 8 numbers", "got str '0 0 0'"],
        ),
        (
            {CAMERAS[0]: np.zeros((64, 48, 3), np.uint8)},
            [f"camera '{CAMERAS[0]}' must be (H, W, 3) uint8 with H <= 32 and W <= 32", "got shape (64, 48, 3) uint8"],
        ),
        (
            {CAMERAS[1]: np.zeros((SIZE, SIZE, 3), np.float32)},
            [f"camera '{CAMERAS[1]}' must be (H, W, 3) uint8", "float32"],
        ),
        (
            {CAMERAS[0]: np.zeros((0, SIZE, 3), np.uint8)},
            [f"camera '{CAMERAS[0]}'", "got shape (0, 32, 3)"],
        ),
        (
            {WORLD_KEY: np.zeros((4, 2 * SIZE, 2 * SIZE, 3), np.uint8)},
            [
                f"the world window '{WORLD_KEY}' must be (",
                f"H <= 32 and W <= 32 (the render size the server advertises for '{CAMERAS[0]}')",
                "(4, 64, 64, 3)",
            ],
        ),
        (
            {"task": "pick " * 40_000},
            ["'task' is 200000 characters long; an instruction may have at most 2000"],
        ),
        ({"task": 7}, ["'task' must be the instruction as a string, got int 7"]),
        (
            {EPISODE_KEY: "e" * 1000, STEP_KEY: 0},
            [f"'{EPISODE_KEY}' must be a string of 1 to 256 characters", "(1000 characters)"],
        ),
        ({EPISODE_KEY: "a", STEP_KEY: -1}, [f"'{STEP_KEY}' must be a chunk index >= 0, got int -1"]),
        ({EPISODE_KEY: "a", STEP_KEY: True}, [f"'{STEP_KEY}' must be a chunk index >= 0, got bool True"]),
    ],
    ids=[
        "state-dim",
        "state-text",
        "camera-too-large",
        "camera-float",
        "camera-empty",
        "world-too-large",
        "long-task",
        "task-int",
        "long-episode-id",
        "negative-step",
        "bool-step",
    ],
)
def test_a_bad_field_is_named_with_what_was_expected(served, change, needles):
    server, port = served
    obs = observation(1, server.policy.runner.num_frames)
    reply = ask(port, {**obs, **change})
    assert isinstance(reply, str) and reply.startswith("bad request: "), reply
    for needle in needles:
        assert needle in reply, reply
    assert len(reply) < 400  # one short line, even for a 200,000-character instruction


@pytest.mark.parametrize(
    "body, needle",
    [
        ({EPISODE_KEY: "a", "seed": "3", "instructions": []}, f"reset 'seed' must be an integer in [0, {SEED_MAX}]"),
        ({EPISODE_KEY: "a", "seed": -1, "instructions": []}, "reset 'seed' must be an integer in [0, "),
        ({EPISODE_KEY: "a", "seed": 1.5, "instructions": []}, "got float 1.5"),
        ({EPISODE_KEY: 3, "seed": 1, "instructions": []}, f"reset '{EPISODE_KEY}' must be a string"),
        (
            {EPISODE_KEY: "a", "seed": 1, "instructions": ["x" * 5000]},
            "reset 'instructions'[0] is 5000 characters long; an instruction may have at most 2000",
        ),
        (
            {EPISODE_KEY: "a", "seed": 1, "instructions": ["x"] * 100},
            "reset 'instructions' must be a list of at most 64 strings",
        ),
        ("go", f"'{RESET_KEY}' must be a map of"),
    ],
    ids=["seed-text", "seed-negative", "seed-float", "episode-int", "long-instruction", "many-instructions", "not-map"],
)
def test_a_bad_reset_is_named(served, body, needle):
    server, port = served
    reply = ask(port, {RESET_KEY: body})
    assert isinstance(reply, str) and needle in reply, reply


def test_a_numpy_seed_is_a_seed(served):
    server, port = served
    assert ask(port, {RESET_KEY: {EPISODE_KEY: "np", "seed": np.int64(3), "instructions": ["move"]}}) == {
        RESET_KEY: "np"
    }


def test_a_long_instruction_holds_up_no_one(served):
    """A 200,000-character task used to hold the model thread for minutes, every other client waiting behind it:
    it is refused at once, and a client asking meanwhile is answered as usual."""
    server, port = served
    frames = server.policy.runner.num_frames
    replies: dict = {}

    def long_one():
        replies["long"] = ask(port, observation(2, frames, task="open the drawer " * 12_500))

    thread = threading.Thread(target=long_one)
    started = time.perf_counter()
    thread.start()
    replies["normal"] = ask(port, observation(3, frames))
    thread.join(REPLY_S)
    assert time.perf_counter() - started < REPLY_S
    assert "200000 characters long" in replies["long"]
    assert replies["normal"]["actions"].shape[0] == server.policy.runner.chunk_size


def test_a_message_past_the_limit_closes_its_connection_naming_the_limit(served):
    server, port = served
    limit = server.policy.max_message_bytes
    obs = {**observation(4, server.policy.runner.num_frames), "junk": np.zeros(limit + 1, np.uint8)}
    with connect(f"ws://127.0.0.1:{port}", max_size=None, open_timeout=10) as ws:
        wire.unpackb(ws.recv(timeout=REPLY_S))
        ws.send(wire.packb(obs))
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=REPLY_S)
    assert closed.value.rcvd.code == 1009 and f"limit of {limit} bytes" in closed.value.rcvd.reason
    client = PolicyClient("127.0.0.1", port, retries=3, backoff_s=0.01)
    with pytest.raises(RequestRefused, match=f"limit of {limit} bytes"):  # refused once, not resent as a lost server
        client.infer(obs)
    client.close()
    # The server goes on; keys beyond the model's inputs are dropped, not passed to it.
    reply = ask(port, {**observation(5, server.policy.runner.num_frames), "junk": np.zeros(10, np.uint8), "text": "x"})
    assert reply["actions"].shape[0] == server.policy.runner.chunk_size
