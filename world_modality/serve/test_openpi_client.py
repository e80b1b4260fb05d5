"""openpi's own client (`openpi-client`'s `WebsocketClientPolicy`) against the server: an observation in this
project's keys or in openpi's LIBERO example keys gets the same chunk, and a bad request makes the client raise,
naming the cause, with the connection still answering afterwards."""

import numpy as np
import pytest

# A test dependency the Makefile installs (`pip install --no-deps`, as its metadata asks for numpy<2): missing, this
# file fails to import, never skips.
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from world_modality.inference import wire
from world_modality.inference.remote import WORLD_KEY
from world_modality.inference.runner import PolicyRunner
from world_modality.serve.batched import BatchedPolicy
from world_modality.serve.checks import BadRequest
from world_modality.serve.openpi_keys import ALIASES
from world_modality.serve.server import PolicyServer
from world_modality.serve.test_serve import CAMERAS, SIZE, observation, tiny_run  # noqa: F401 (the module's fixture)

# openpi-client 0.1.2 opens its connection without a `with` block, which websockets 17 warns of; nothing here to fix.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

THEIRS = {ours: theirs for theirs, ours in ALIASES.items()}
OPENPI_IMAGE, OPENPI_WRIST = THEIRS[CAMERAS[0]], THEIRS[CAMERAS[1]]


@pytest.fixture(scope="module")
def served(tiny_run):  # noqa: F811
    server = PolicyServer(BatchedPolicy(PolicyRunner(tiny_run, device="cpu", seed=0)), port=0, batch_window_ms=0)
    port = server.start()
    yield server, port
    server.stop()


def openpi_keyed(obs: dict) -> dict:
    """`obs` as openpi's LIBERO example sends it: its keys, the state as float64 (the world window has no openpi
    name and keeps its own)."""
    out = {THEIRS.get(k, k): v for k, v in obs.items()}
    out["observation/state"] = out["observation/state"].astype(np.float64)
    return out


def test_openpi_keys_are_libero_cameras_state_and_instruction():
    assert ALIASES == {
        "observation/image": "observation.images.image",
        "observation/wrist_image": "observation.images.wrist_image",
        "observation/state": "observation.state",
        "prompt": "task",
    }


def test_openpis_msgpack_numpy_and_this_wire_read_each_other():
    """openpi's msgpack_numpy under the installed numpy (2.x here) and `inference/wire.py` speak one format."""
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    img = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    ours = wire.unpackb(msgpack_numpy.packb({"x": x, "img": img, "n": np.int64(7), "prompt": "go"}))
    assert np.array_equal(ours["x"], x) and ours["x"].dtype == np.float32
    assert np.array_equal(ours["img"], img) and ours["n"] == 7 and ours["prompt"] == "go"
    theirs = msgpack_numpy.unpackb(wire.packb({"actions": x, "t": {"ms": 1.5}}))
    assert np.array_equal(theirs["actions"], x) and theirs["actions"].dtype == np.float32 and theirs["t"]["ms"] == 1.5


def test_openpis_client_is_answered_alike_in_either_key_set(served):
    server, port = served
    runner = server.policy.runner
    client = WebsocketClientPolicy("127.0.0.1", port)
    assert client.get_server_metadata()["chunk_size"] == runner.chunk_size
    obs = observation(1, runner.num_frames)
    ours = client.infer(obs)
    assert ours["actions"].shape == (runner.chunk_size, 7) and ours["actions"].dtype == np.float32
    assert ours["server_timing"]["batch_size"] == 1
    theirs = client.infer(openpi_keyed(obs))
    assert np.array_equal(theirs["actions"], ours["actions"])
    # The aliases name particular cameras: the same pictures under each other's key are another observation.
    swapped = {**openpi_keyed(obs), OPENPI_IMAGE: obs[CAMERAS[1]], OPENPI_WRIST: obs[CAMERAS[0]]}
    assert not np.array_equal(client.infer(swapped)["actions"], ours["actions"])


@pytest.mark.parametrize(
    "change, needles",
    [
        (
            lambda o: {**o, "observation.state": np.zeros(3, np.float32)},
            ["'observation.state' must be a vector of 8 numbers (the checkpoint's state dimension)", "(3,)"],
        ),
        (
            lambda o: {**openpi_keyed(o), "observation/state": np.zeros(7)},
            [
                "'observation/state' must be openpi's LIBERO state, a vector of 8 numbers: end-effector position (3), "
                "axis-angle (3), gripper finger positions (2)",
                "got shape (7,)",
            ],
        ),
        (
            lambda o: {**openpi_keyed(o), OPENPI_IMAGE: np.zeros((224, 224, 3), np.uint8)},
            [
                f"camera '{OPENPI_IMAGE}' must be (H, W, 3) uint8 with H <= {SIZE} and W <= {SIZE} (the render size "
                f"the server advertises for '{CAMERAS[0]}')",
                "got shape (224, 224, 3) uint8",
            ],
        ),
        (
            lambda o: {**openpi_keyed(o), CAMERAS[1]: o[CAMERAS[1]]},
            [f"the observation carries both '{CAMERAS[1]}' and its openpi alias '{OPENPI_WRIST}'; send one of them."],
        ),
        (
            lambda o: {k: v for k, v in openpi_keyed(o).items() if k != "prompt"},
            ["the observation lacks 'task' (or openpi's 'prompt'), the instruction as a string"],
        ),
        (lambda o: {**openpi_keyed(o), "prompt": 3}, ["'prompt' must be the instruction as a string, got int 3"]),
    ],
    ids=["state-dim", "openpi-state-dim", "openpi-image-too-large", "key-and-alias", "no-prompt", "prompt-int"],
)
def test_a_bad_request_makes_openpis_client_raise_naming_the_cause(served, change, needles):
    server, port = served
    runner = server.policy.runner
    client = WebsocketClientPolicy("127.0.0.1", port)
    obs = observation(2, runner.num_frames)
    with pytest.raises(RuntimeError, match="^Error in inference server:\nbad request: ") as refused:
        client.infer(change(obs))
    for needle in needles:
        assert needle in str(refused.value), refused.value
    # The connection stays open: the same client is answered next.
    assert client.infer(openpi_keyed(obs))["actions"].shape[0] == runner.chunk_size


def test_openpis_state_is_refused_for_a_checkpoint_of_another_state_layout(served):
    """openpi's 8-D LIBERO state is mapped only onto an 8-D `observation.state`; for another dimension the request
    is refused naming both layouts, never reshaped."""
    server, _ = served
    policy = BatchedPolicy(server.policy.runner)
    policy.state_dim = 9  # as a checkpoint trained on a 9-D state would advertise
    obs = openpi_keyed(observation(3, server.policy.runner.num_frames))
    with pytest.raises(BadRequest) as refused:
        policy.check(obs)
    assert str(refused.value) == (
        "'observation/state' is openpi's LIBERO state (8 numbers: end-effector position (3), axis-angle (3), gripper "
        "finger positions (2)), but this checkpoint's 'observation.state' has 9 numbers, a layout it cannot be "
        "mapped onto; send 'observation.state' in the checkpoint's layout."
    )
    with pytest.raises(BadRequest, match=r"'observation.state' must be a vector of 9 numbers"):
        policy.check({**observation(3, server.policy.runner.num_frames), WORLD_KEY: obs[WORLD_KEY]})
