"""An external arm (`ExternalRunner`) against stand-in servers written here with openpi's own msgpack code: what it
sends is openpi's LIBERO example request, what it executes is its stated conventions; a garbled reply, an error
frame and a hang are raised (an evaluation's errors), a lost connection is reopened."""

import json
import threading
import time

import numpy as np
import pytest
from openpi_client import image_tools, msgpack_numpy
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from world_modality.inference.arm import CONVENTIONS, ArmSpec, ArmSpecError, build_spec, parse_arm
from world_modality.inference.external import BadReply, ExternalRunner, ServerHung, resize_with_pad
from world_modality.inference.remote import RequestRefused, ServerLost
from world_modality.sim.env import IMAGE_KEY, STATE_KEY, WRIST_KEY

HANG = object()  # an answer that never comes
CLOSE = object()  # the connection dropped instead of an answer


def chunk_of(n: int, gripper: float = -1.0) -> np.ndarray:
    """n actions, each naming its index in the chunk (first value), the gripper as given."""
    a = np.zeros((n, 7), np.float32)
    a[:, 0] = np.arange(n) / 100
    a[:, 6] = gripper
    return a


class StandIn:
    """A policy server in openpi's protocol (metadata first, msgpack maps, errors as text frames), answering each
    request with `answer(request, i)`: a dict (packed with openpi's msgpack_numpy), a str (an error frame), raw
    bytes, HANG or CLOSE. `requests` keeps what came, decoded by openpi's code."""

    def __init__(self, answer, metadata=None):
        self.answer, self.metadata = answer, metadata if metadata is not None else {"policy": "stand-in"}
        self.requests: list[dict] = []
        self.connections = 0
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None, max_size=None)
        self.port = self._server.socket.getsockname()[1]
        self.address = f"ws://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handle(self, ws):
        try:
            self._serve(ws)
        except ConnectionClosed:  # a client gone without a goodbye (an evaluation worker ending), as openpi's server
            pass

    def _serve(self, ws):
        self.connections += 1
        if self.metadata is HANG:
            for _ in ws:
                pass
            return
        ws.send(self.metadata if isinstance(self.metadata, str) else msgpack_numpy.packb(self.metadata))
        for message in ws:
            request = msgpack_numpy.unpackb(message)
            self.requests.append(request)
            reply = self.answer(request, len(self.requests) - 1)
            if reply is HANG:
                continue
            if reply is CLOSE:
                return
            ws.send(reply if isinstance(reply, (str, bytes)) else msgpack_numpy.packb(reply))

    def stop(self):
        self._server.shutdown()


def spec(name="standin", **kw) -> ArmSpec:
    return ArmSpec.from_dict({"name": name, **CONVENTIONS["openpi-libero"], "chunk_size": 8, **kw})


def observation(rng, size=64) -> dict:
    return {
        IMAGE_KEY: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        WRIST_KEY: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        STATE_KEY: rng.normal(size=8).astype(np.float32),
        "task": "put the bowl on the plate",
    }


@pytest.fixture
def standin():
    servers = []

    def start(answer, **kw):
        servers.append(StandIn(answer, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def test_a_spec_round_trips_and_states_every_convention():
    s = spec(replan_every=3)
    assert ArmSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.conventions() == {k: v for k, v in s.to_dict().items() if k != "name"}
    with pytest.raises(ArmSpecError, match="does not state chunk_size") as e:
        build_spec("pi", "openpi-libero")
    assert "image_size" not in str(e.value)  # the preset states the others
    with pytest.raises(ArmSpecError, match="does not state image_orientation.*render_profile"):
        build_spec("pi", fields_set=["chunk_size=10"])
    with pytest.raises(ArmSpecError, match="fields no arm has: resize"):
        ArmSpec.from_dict({**s.to_dict(), "resize": "pad"})
    with pytest.raises(ArmSpecError, match="replan_every is 9 with chunk_size 8"):
        spec(replan_every=9)
    with pytest.raises(ArmSpecError, match="control_steps_per_frame is 3"):
        spec(control_steps_per_frame=3)
    with pytest.raises(ArmSpecError, match="gripper is 'closed'"):
        spec(gripper="closed")
    with pytest.raises(ArmSpecError, match="render_size is '256'"):
        spec(render_size="256")  # a JSON file's string is not a number
    with pytest.raises(ArmSpecError, match="whole number"):
        build_spec("pi", "openpi-libero", fields_set=["chunk_size=ten"])
    assert parse_arm("pi05=ws://gpu:8000") == ("pi05", "ws://gpu:8000")
    for bad in ("pi05", "pi05=gpu:8000", "pi05=ws://gpu", "a/b=ws://gpu:1"):
        with pytest.raises(ArmSpecError):
            parse_arm(bad)


def test_a_spec_file_is_layered_between_the_convention_and_the_fields(tmp_path):
    f = tmp_path / "arm.json"
    f.write_text(json.dumps({"chunk_size": 10, "replan_every": 2}))
    s = build_spec("pi", "openpi-libero", f, ["replan_every=4"])
    assert (s.chunk_size, s.replan_every, s.image_size) == (10, 4, 224)
    f.write_text(json.dumps({"name": "other", "chunk_size": 10}))
    with pytest.raises(ArmSpecError, match="is arm 'other'"):
        build_spec("pi", "openpi-libero", f)


def test_the_request_is_openpis_and_the_chunk_is_executed_as_stated(standin):
    server = standin(lambda req, i: {"actions": chunk_of(8, gripper=1.0) + i})
    runner = ExternalRunner(server.address, spec(replan_every=3))
    assert runner.metadata == {"policy": "stand-in"}
    rng = np.random.default_rng(0)
    runner.reset(0, instructions=("put the bowl on the plate",))
    obs = observation(rng)
    actions = []
    for _ in range(7):
        needs = runner.needs_observation
        actions.append(runner.select_action(obs if needs else None))
    assert len(server.requests) == 3  # frames 0, 3, 6: three actions of each chunk of eight
    assert [round(float(a[0]) * 100) for a in actions] == [0, 1, 2, 100, 101, 102, 200]
    req = server.requests[0]
    assert sorted(req) == ["observation/image", "observation/state", "observation/wrist_image", "prompt"]
    for key, ours in (("observation/image", IMAGE_KEY), ("observation/wrist_image", WRIST_KEY)):
        assert req[key].dtype == np.uint8 and req[key].shape == (224, 224, 3)
        assert np.array_equal(req[key], image_tools.resize_with_pad(obs[ours], 224, 224))  # openpi's own resize
    assert req["observation/state"].dtype == np.float64 and np.allclose(req["observation/state"], obs[STATE_KEY])
    assert req["prompt"] == "put the bowl on the plate"
    runner.close()


def test_stated_orientation_and_gripper_are_applied(standin):
    server = standin(lambda req, i: {"actions": chunk_of(8, gripper=1.0)})
    runner = ExternalRunner(
        server.address, spec(image_size=64, image_orientation="raw_render", gripper="open=+1,close=-1")
    )
    rng = np.random.default_rng(1)
    obs = observation(rng)
    runner.reset(0, ())
    action = runner.select_action(obs)
    assert action[6] == -1.0  # the arm's +1 (open) is the simulator's -1
    sent = server.requests[0]["observation/image"]
    assert np.array_equal(sent, obs[IMAGE_KEY][::-1, ::-1])  # turned back to the raw render, not resized (64 px)


def test_resize_with_pad_is_openpis():
    rng = np.random.default_rng(2)
    for shape in ((256, 256, 3), (128, 200, 3), (300, 90, 3)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(resize_with_pad(img, 224), image_tools.resize_with_pad(img, 224, 224))


@pytest.mark.parametrize(
    "reply, expected",
    [
        ({"action": chunk_of(8)}, "without 'actions'"),
        ({"actions": chunk_of(4)}, r"shape \(4, 7\).*\(8, 7\)"),
        ({"actions": np.zeros((8, 8), np.float32)}, r"shape \(8, 8\)"),
        ({"actions": "forward"}, "str 'forward'"),
        ({"actions": np.full((8, 7), np.nan, np.float32)}, "non-finite"),
        ([1, 2, 3], "expected a map"),
        (b"\xc1\xc1", "not msgpack"),
    ],
    ids=["no-actions", "short-chunk", "wide-actions", "text-actions", "nan", "a-list", "not-msgpack"],
)
def test_a_garbled_reply_is_refused_naming_it(standin, reply, expected):
    server = standin(lambda req, i: reply)
    runner = ExternalRunner(server.address, spec())
    runner.reset(0, ("task",))
    with pytest.raises(BadReply, match=expected):
        runner.select_action(observation(np.random.default_rng(3)))


def test_an_error_frame_is_refused_with_the_servers_text(standin):
    server = standin(lambda req, i: "Traceback ...\nKeyError: 'observation/image'")
    runner = ExternalRunner(server.address, spec())
    runner.reset(0, ("task",))
    with pytest.raises(RequestRefused, match="KeyError: 'observation/image'"):
        runner.select_action(observation(np.random.default_rng(4)))


def test_a_hang_ends_the_request_and_a_late_answer_is_never_read(standin):
    server = standin(lambda req, i: HANG if i == 0 else {"actions": chunk_of(8) + i})
    runner = ExternalRunner(server.address, spec(), timeout_s=2)
    runner.reset(0, ("task",))
    obs = observation(np.random.default_rng(5))
    start = time.perf_counter()
    with pytest.raises(ServerHung, match="nothing within 2 s"):
        runner.act(obs)
    assert time.perf_counter() - start < 10
    assert runner.act(obs)[0, 0] == np.float32(1.0)  # the second request's answer, on a new connection
    assert server.connections == 2


def test_a_lost_connection_is_reopened_and_the_request_resent(standin):
    server = standin(lambda req, i: CLOSE if i == 0 else {"actions": chunk_of(8) + i})
    runner = ExternalRunner(server.address, spec(), backoff_s=0.01)
    runner.reset(0, ("task",))
    assert runner.act(observation(np.random.default_rng(6)))[0, 0] == np.float32(1.0)
    assert len(server.requests) == 2 and server.connections == 2


def test_a_server_that_opens_with_no_metadata_is_refused(standin):
    with pytest.raises(BadReply, match="opened with str 'hello'"):
        ExternalRunner(standin(None, metadata="hello").address, spec())
    with pytest.raises(ServerHung):
        ExternalRunner(standin(None, metadata=HANG).address, spec(), timeout_s=0.3)


def test_no_server_is_lost_after_the_retries():
    with pytest.raises(ServerLost, match="4 tries failed"):
        ExternalRunner(f"ws://127.0.0.1:{_free_port()}", spec(), backoff_s=0.01)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
