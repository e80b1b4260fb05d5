"""`world-modality eval --arm NAME=ws://...` in the real simulator against stand-in servers: a scripted one gives
episodes with outcomes under the arm's name and conventions (resumed, refused when a convention changes, read by the
report and paired); garbled replies and a hang are errors, retried, counted apart, and the command exits non-zero."""

import json

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import numpy as np
import pytest

from world_modality.eval_libero import main
from world_modality.inference.arm import ArmSpec
from world_modality.inference.test_external import HANG, StandIn, chunk_of

pytestmark = [pytest.mark.sim, pytest.mark.slow]

STEPS, REPLAN = 10, 5


def eval_args(name, server, out, *extra) -> list[str]:
    """One task, few control steps, small renders: the protocol and the bookkeeping, not the policy."""
    return [
        "--arm",
        f"{name}={server.address}",
        "--arm_convention",
        "openpi-libero",
        *("--arm_set", "chunk_size=8", "--arm_set", "render_size=64", "--arm_set", "image_size=64"),
        *("--arm_set", "render_profile=fast", "--arm_set", f"replan_every={REPLAN}"),
        *("--suite", "libero_spatial", "--tasks", "0", "--workers", "1", "--max_steps", str(STEPS)),
        *("--out", str(out)),
        *extra,
    ]


@pytest.fixture
def servers():
    started = []

    def start(answer):
        started.append(StandIn(answer))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_arm_is_evaluated_under_its_name_and_conventions(servers, tmp_path, capsys):
    server = servers(lambda req, i: {"actions": chunk_of(8)})  # still, the gripper open: every episode a failure
    out = tmp_path / "arms" / "standin" / "eval" / "libero_spatial-external"
    assert main(eval_args("standin", server, out, "--n_episodes", "2")) == 0
    printed = capsys.readouterr().out
    assert "held-out starts NOT checked: no training data declared for arm standin" in printed

    records = lines(out / "episodes.jsonl")
    assert [(r["init_index"], r["outcome"], r["steps"]) for r in records] == [
        (0, "failure", STEPS),
        (1, "failure", STEPS),
    ]
    assert {(r["experiment"], r["arm"], r["memory"], r["checkpoint"]) for r in records} == {
        ("standin", "standin", "external", None)
    }
    # One request per REPLAN control steps (one action per control step), each openpi's LIBERO request.
    assert len(server.requests) == 2 * STEPS // REPLAN
    req = server.requests[0]
    assert req["observation/image"].shape == (64, 64, 3) and req["observation/state"].shape == (8,)
    assert req["prompt"] == records[0]["task"]

    settings = json.loads((out / "settings.json").read_text())
    spec = ArmSpec.from_dict(settings["arm"])  # what a study rebuilds the arm from
    assert (spec.name, spec.chunk_size, spec.control_steps_per_frame) == ("standin", 8, 1)
    ident = settings["identity"]
    assert ident["arm"] == "standin" and ident["arm_chunk_size"] == 8 and ident["replan_every"] == REPLAN
    assert "arm_address" not in ident and server.address not in json.dumps(ident)  # where it runs is not identity
    assert settings["overlap"]["checked"] is False

    # Rerun: nothing to do, and the training starts declared now are checked (a start far from every evaluated one).
    far = tmp_path / "starts.jsonl"
    state = np.asarray(_stored_state(0, 0)) + 1.0
    far.write_text(json.dumps({"suite": "libero_spatial", "task_id": 0, "sim_state": state.tolist()}) + "\n")
    assert main(eval_args("standin", server, out, "--n_episodes", "2", "--train_starts", str(far))) == 0
    assert "held-out starts checked against 1 training starts" in capsys.readouterr().out
    assert len(server.requests) == 2 * STEPS // REPLAN and len(lines(out / "episodes.jsonl")) == 2

    # Another convention is another arm: refused into this folder, naming the field.
    assert main(eval_args("standin", server, out, "--n_episodes", "2", "--arm_set", "chunk_size=10")) == 2
    assert "arm_chunk_size: 8 there, 10 now" in capsys.readouterr().err

    # A second arm on the same starts: the report pairs the two.
    other = tmp_path / "arms" / "other" / "eval" / "libero_spatial-external"
    assert main(eval_args("other", server, other, "--n_episodes", "2")) == 0
    from world_modality.analysis.report import write_report

    result = write_report([tmp_path / "arms" / "standin", tmp_path / "arms" / "other"], tmp_path / "report")
    assert result["experiments"]["standin"]["n"] == 2 and result["experiments"]["other"]["k"] == 0
    assert result["paired"]["a"] == "standin" and result["paired"]["b"] == "other"


def _stored_state(task, init):
    from world_modality.sim.suites import load_task

    return np.asarray(load_task("libero_spatial", task)[1][init], dtype=np.float64).tolist()


def test_training_starts_declared_are_refused_as_evaluation_starts(servers, tmp_path, capsys):
    server = servers(lambda req, i: {"actions": chunk_of(8)})
    starts = tmp_path / "starts.jsonl"
    starts.write_text(json.dumps({"suite": "libero_spatial", "task_id": 0, "sim_state": _stored_state(0, 1)}) + "\n")
    args = eval_args("standin", server, tmp_path / "e", "--n_episodes", "2", "--train_starts", str(starts))
    assert main(args) == 2
    assert "task 0 init 1" in capsys.readouterr().err
    assert server.requests == [] and not (tmp_path / "e" / "episodes.jsonl").exists()


@pytest.mark.parametrize(
    "answer, error",
    [
        (lambda req, i: {"actions": chunk_of(3)}, "BadReply"),
        (lambda req, i: {"action": chunk_of(8)}, "BadReply"),
        (lambda req, i: HANG, "ServerHung"),
    ],
    ids=["short-chunk", "wrong-key", "hang"],
)
def test_a_garbled_or_hung_server_is_an_error_not_a_failure(servers, tmp_path, capsys, answer, error):
    server = servers(answer)
    out = tmp_path / "e"
    # A hang waits out the timeout twice (the episode and its retry); the others must not meet it on a loaded machine.
    timeout = "4" if error == "ServerHung" else "120"
    assert main(eval_args("standin", server, out, "--n_episodes", "1", "--arm_timeout", timeout)) == 1
    records = lines(out / "episodes.jsonl")
    assert [r["outcome"] for r in records] == ["error"]  # written after its one retry
    assert records[0]["error"].startswith(error) and records[0]["success"] is None
    assert len(server.requests) == 2  # the first request of each of the two tries
    assert "ERROR: 1 episode(s) ended in an error, not counted in any rate" in capsys.readouterr().out


def test_an_arm_whose_server_cannot_be_reached_is_refused_before_anything_runs(tmp_path):
    from world_modality.config import ConfigError
    from world_modality.evaluate.closed_loop import EvalSettings, evaluate
    from world_modality.inference.test_external import _free_port, spec

    address = f"ws://127.0.0.1:{_free_port()}"
    settings = EvalSettings(arm=spec().to_dict(), arm_address=address, tasks=(0,), n_episodes=1, out=str(tmp_path))
    with pytest.raises(ConfigError, match=f"--arm standin={address}: policy server .* lost: 3 tries failed"):
        evaluate(settings, progress=False)
    assert not (tmp_path / "episodes.jsonl").exists() and not (tmp_path / "settings.json").exists()
