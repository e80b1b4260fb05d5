"""Closed-loop evaluation through a policy server in the real simulator: the same episodes as local evaluation,
with a policy that draws noise at every chunk (`random` memory)."""

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import pytest

from world_modality.evaluate.closed_loop import EvalSettings, evaluate
from world_modality.inference.runner import PolicyRunner
from world_modality.serve.batched import BatchedPolicy
from world_modality.serve.server import PolicyServer

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_a_served_evaluation_gives_the_local_episodes(trained_e2, tmp_path):
    base = {
        "checkpoint": str(trained_e2),
        "tasks": (0,),
        "n_episodes": 2,
        "workers": 1,
        "max_steps": 40,
        "memory": "random",
        "video": 2,
        "device": "cpu",
    }
    local = evaluate(EvalSettings(**base, out=str(tmp_path / "local")), progress=False)
    server = PolicyServer(BatchedPolicy(PolicyRunner(trained_e2, "random", device="cpu", seed=123)), port=0)
    port = server.start()
    try:
        served = evaluate(
            EvalSettings(**base, out=str(tmp_path / "served"), policy_server=f"127.0.0.1:{port}"), progress=False
        )
    finally:
        server.stop()
    assert not local.errors and not served.errors and len(served.finished) == 2
    keys = ("task_id", "init_index", "success", "steps", "frames", "failure")
    assert [{k: r[k] for k in keys} for r in served.finished] == [{k: r[k] for k in keys} for r in local.finished]
    # The rollouts themselves: every chunk's observation, filmed, is the same picture.
    for a, b in zip(local.finished, served.finished, strict=True):
        assert (tmp_path / "local" / a["video"]).read_bytes() == (tmp_path / "served" / b["video"]).read_bytes()
