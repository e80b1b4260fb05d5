"""A closed-loop episode driven through `RemoteRunner` gets the actions a local `PolicyRunner` gives, bit for bit."""

import threading

import numpy as np
import pytest

from world_modality.inference.remote import RemoteRunner, parse_address
from world_modality.inference.runner import PolicyRunner
from world_modality.serve.batched import BatchedPolicy
from world_modality.serve.server import PolicyServer
from world_modality.serve.test_serve import CAMERAS, SIZE, tiny_run  # noqa: F401 (the module's checkpoint fixture)


def test_addresses():
    assert parse_address("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_address("gpu-box:80") == ("gpu-box", 80)
    for bad in ("8000", "host:", ":80", "host:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def test_remote_episode_matches_the_local_runner(tiny_run):  # noqa: F811
    server = PolicyServer(BatchedPolicy(PolicyRunner(tiny_run, device="cpu", seed=0)), port=0)
    port = server.start()
    try:
        local, remote = PolicyRunner(tiny_run, device="cpu", seed=0), RemoteRunner(f"127.0.0.1:{port}")
        for name in (
            "render_sizes",
            "image_keys",
            "control_steps_per_frame",
            "chunk_size",
            "replan_every",
            "num_frames",
            "frame_stride",
            "uses_world",
            "world_key",
        ):
            assert getattr(remote, name) == getattr(local, name), name
        assert remote.cfg.data.image_size == local.cfg.data.image_size
        rng = np.random.default_rng(0)
        for runner in (local, remote):
            runner.reset(3, instructions="move the block")
        chunks_asked = 0
        for frame in range(2 * local.chunk_size + 1):
            obs = {k: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in CAMERAS}
            obs.update({"observation.state": rng.normal(size=8).astype(np.float32), "task": "move the block"})
            assert remote.needs_observation == local.needs_observation
            assert remote.needs_world_frame == local.needs_world_frame
            chunks_asked += local.needs_observation
            world = obs[CAMERAS[0]] if local.needs_world_frame else None
            a_local, a_remote = local.select_action(obs, world), remote.select_action(obs, world)
            assert np.array_equal(a_local, a_remote), frame
        assert chunks_asked >= 3
        remote.close()
    finally:
        server.stop()


def _obs(rng) -> dict:
    obs = {k: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in CAMERAS}
    obs.update({"observation.state": rng.normal(size=8).astype(np.float32), "task": "move the block"})
    return obs


def _episode(runner, seed: int, frames: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + seed)
    runner.reset(seed, instructions="move the block")
    out = []
    for _ in range(frames):
        obs = _obs(rng)
        out.append(runner.select_action(obs, obs[CAMERAS[0]] if runner.needs_world_frame else None))
    return out


def test_episodes_draw_their_own_noise_as_they_would_locally(tiny_run):  # noqa: F811
    """`random` memory draws noise every chunk: two episodes served at once, each seeded by its reset, get the
    local runner's actions bit for bit, whatever the other does or the server's own seed; a rerun repeats."""
    server = PolicyServer(
        BatchedPolicy(PolicyRunner(tiny_run, "random", device="cpu", seed=99)), port=0, batch_window_ms=50
    )
    port = server.start()
    try:
        local = PolicyRunner(tiny_run, "random", device="cpu", seed=0)
        frames = 2 * local.chunk_size + 1
        expected = {seed: _episode(local, seed, frames) for seed in (3, 5)}
        assert not np.array_equal(expected[3][0], _episode(local, 4, 1)[0])  # the seed matters
        remotes = {seed: RemoteRunner(f"127.0.0.1:{port}") for seed in (3, 5)}
        results: dict = {}
        threads = [
            threading.Thread(target=lambda s=s: results.__setitem__(s, _episode(remotes[s], s, frames)))
            for s in remotes
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        again = _episode(remotes[3], 3, frames)  # the same runner, the episode run again (a retry)
        for seed, actions in expected.items():
            assert all(np.array_equal(a, b) for a, b in zip(actions, results[seed], strict=True)), seed
        assert all(np.array_equal(a, b) for a, b in zip(expected[3], again, strict=True))
        for r in remotes.values():
            r.close()
    finally:
        server.stop()


def test_an_episode_step_is_answered_once_and_in_turn(tiny_run):  # noqa: F811
    from world_modality.serve.batched import BadRequest, Request

    policy = BatchedPolicy(PolicyRunner(tiny_run, "random", device="cpu", seed=0))
    local = PolicyRunner(tiny_run, "random", device="cpu", seed=0)
    local.reset(7)
    rng = np.random.default_rng(0)
    obs, window = _obs(rng), rng.integers(0, 256, (local.num_frames, SIZE, SIZE, 3), dtype=np.uint8)
    first, second = local.act(obs, window), local.act(obs, window)
    policy.reset_episode("a", 7, [])
    ask = lambda step, episode="a": policy.act_batch([Request(obs, window, episode, step)])[0]  # noqa: E731
    assert np.array_equal(ask(0), first)
    assert np.array_equal(ask(0), first)  # resent after a lost reply: the same chunk, no new draw
    assert np.array_equal(ask(1), second)
    assert isinstance(ask(3), BadRequest) and "expected" in str(ask(3))
    assert isinstance(ask(0, "b"), BadRequest) and "reset" in str(ask(0, "b"))
    policy.reset_episode("a", 7, [])  # a retried episode starts over
    assert np.array_equal(ask(0), first)


def test_the_server_must_serve_the_evaluated_weights(tiny_run):  # noqa: F811
    from world_modality.config import ConfigError
    from world_modality.evaluate.server_check import check_server
    from world_modality.policy.checkpoint_store import weights_sha256

    runner = PolicyRunner(tiny_run, device="cpu")
    server = PolicyServer(BatchedPolicy(runner), port=0)
    port = server.start()
    try:
        sha, address = weights_sha256(tiny_run), f"127.0.0.1:{port}"
        assert check_server(address, sha, runner.memory_mode)["checkpoint"] == str(runner.checkpoint)
        with pytest.raises(ConfigError, match="not the checkpoint evaluated"):
            check_server(address, "0" * 16, runner.memory_mode)
        with pytest.raises(ConfigError, match="--memory zero"):
            check_server(address, sha, "zero")
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="lost"):
        check_server(address, sha, runner.memory_mode)


def test_a_lost_server_ends_the_episode_as_an_error(tiny_run):  # noqa: F811
    """The worker's job: a server gone before or during an episode is an error outcome, never a failure."""
    from world_modality.evaluate import worker

    class Env:
        task_id, task = 0, "move the block"

        def reset(self, init_index, render=True):
            return _obs(np.random.default_rng(init_index))

        def step(self, action):
            return None, False, False, {"t": 1}

        def observe(self):
            return _obs(np.random.default_rng(0))

    server = PolicyServer(BatchedPolicy(PolicyRunner(tiny_run, device="cpu")), port=0)
    port = server.start()
    settings = {"seed": 7, "replan_every": 4, "policy_server": f"127.0.0.1:{port}"}
    try:
        worker._STATE.update(
            settings=settings, env=Env(), runner=RemoteRunner(settings["policy_server"], retries=1, backoff_s=0.01)
        )
        server.stop()
        rec = worker.run_job(0, 3, False)
        assert rec["outcome"] == "error" and rec["success"] is None and rec["failure"] is None
        assert "ServerLost" in rec["error"] and rec["task"] == "move the block"
        worker._STATE.clear()
        worker._STATE.update(settings=settings, env=Env())  # no runner yet: the first job connects, and fails
        rec = worker.run_job(0, 4, False)
        assert rec["outcome"] == "error" and "ServerLost" in rec["error"]
    finally:
        worker._STATE.clear()
        server.stop()


def test_a_refused_request_raises_and_ends_the_episode_as_an_error(tiny_run):  # noqa: F811
    """The server answers a request it cannot take with a text frame (as openpi's server sends an error):
    `RemoteRunner` raises it as `RequestRefused` naming the cause, and the worker's job records an error outcome,
    never a policy failure."""
    from world_modality.evaluate import worker
    from world_modality.inference.remote import RequestRefused

    bad_state = lambda rng: {**_obs(rng), "observation.state": np.zeros(3, np.float32)}  # noqa: E731

    class Env:
        task_id, task = 0, "move the block"

        def reset(self, init_index, render=True):
            return bad_state(np.random.default_rng(init_index))

        def step(self, action):
            return None, False, False, {"t": 1}

        def observe(self):
            return bad_state(np.random.default_rng(0))

    server = PolicyServer(BatchedPolicy(PolicyRunner(tiny_run, device="cpu")), port=0)
    port = server.start()
    settings = {"seed": 7, "replan_every": 4, "policy_server": f"127.0.0.1:{port}"}
    try:
        remote = RemoteRunner(settings["policy_server"], retries=1, backoff_s=0.01)
        remote.reset(0)
        window = np.zeros((remote.num_frames, SIZE, SIZE, 3), np.uint8)
        with pytest.raises(RequestRefused, match=r"'observation.state' must be a vector of 8 numbers.*\(3,\)"):
            remote.act(bad_state(np.random.default_rng(1)), window)
        assert remote.act(_obs(np.random.default_rng(1)), window).shape[0] == remote.chunk_size  # still connected
        worker._STATE.update(settings=settings, env=Env(), runner=remote)
        rec = worker.run_job(0, 3, False)
        assert rec["outcome"] == "error" and rec["success"] is None and rec["failure"] is None
        assert rec["error"].startswith("RequestRefused: ") and "'observation.state' must be" in rec["error"]
        remote.close()
    finally:
        worker._STATE.clear()
        server.stop()


def test_a_bad_server_address_is_refused_before_anything_runs():
    from world_modality.config import ConfigError
    from world_modality.evaluate.closed_loop import EvalSettings

    with pytest.raises(ConfigError, match="HOST:PORT"):
        EvalSettings(checkpoint="runs/e2", policy_server="gpu-box")
    assert EvalSettings(checkpoint="runs/e2", policy_server="gpu-box:8000").policy_server == "gpu-box:8000"
