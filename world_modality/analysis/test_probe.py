"""world-modality probe: the ridge probe recovers a linear signal and not noise, splits by whole episodes,
stops with one line on a dataset without the environment state, and probes a trained run's Prophet."""

import json

import numpy as np
import pytest

from world_modality.analysis.probe import (
    UPPER_BOUND,
    episode_split,
    fit_ridge,
    format_table,
    position_columns,
    probe_arrays,
    r2_scores,
    upper_bound,
)
from world_modality.cli import main
from world_modality.data.fixture import make_fixture_dataset

NAMES = ["cup.pos.x", "cup.pos.y", "cup.pos.z", "bowl.pos.x", "bowl.pos.y", "bowl.pos.z"]
_, OBJECTS = position_columns(NAMES)


def synthetic(signal: bool, n_eps: int = 30, length: int = 20, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    episode_ids = np.repeat(np.arange(n_eps), length)
    x = rng.normal(size=(len(episode_ids), dim))
    if signal:
        y = x @ rng.normal(size=(dim, len(NAMES))) + 0.01 * rng.normal(size=(len(x), len(NAMES)))
    else:
        y = rng.normal(size=(len(x), len(NAMES)))
    train, test = episode_split(episode_ids, 0.25, seed=1)
    return x, y, episode_ids, train, test


def test_position_columns_group_by_object():
    names = ["bowl.pos.x", "bowl.pos.y", "bowl.quat.w", "cabinet.top.qpos", "cup.pos.x"]
    idx, objects = position_columns(names)
    assert idx == [0, 1, 4] and objects == {"bowl": [0, 1], "cup": [2]}


def test_probe_recovers_a_linear_signal():
    x, y, eps, train, test = synthetic(signal=True)
    result = probe_arrays(x, y, NAMES, OBJECTS, eps, train, test, seed=0)
    assert result["present"]["overall"] > 0.99
    assert all(v > 0.99 for v in result["present"]["objects"].values())
    assert set(result["test_episodes"]).isdisjoint(result["train_episodes"])
    assert "cup" in format_table(result) and "overall" in format_table(result)


def test_a_probe_of_the_state_itself_says_it_is_an_upper_bound_on_every_row():
    x, y, eps, train, test = synthetic(signal=True)
    result = probe_arrays(x, y, NAMES, OBJECTS, eps, train, test, seed=0)
    assert UPPER_BOUND not in format_table(result)
    lines = format_table({**result, "upper_bound": UPPER_BOUND}).splitlines()
    rows = lines[lines.index("") + 2 :]  # after the header
    assert UPPER_BOUND in lines[0] and len(rows) == len(OBJECTS) + 1
    assert all(UPPER_BOUND in row for row in rows), rows
    # A result written before results carried the note is recognised by its encoder.
    old = format_table({**result, "features": "z_t of env_state-m4", "encoder": {"name": "env_state"}})
    assert all(UPPER_BOUND in row for row in old.splitlines()[old.splitlines().index("") + 2 :])
    assert upper_bound({"name": "env_state"}) == upper_bound(None, raw_env_state=True) == UPPER_BOUND
    assert upper_bound({"name": "tiny-vjepa2"}) is None and upper_bound(None) is None


def test_probe_scores_noise_near_zero_or_below():
    x, y, eps, train, test = synthetic(signal=False)
    result = probe_arrays(x, y, NAMES, OBJECTS, eps, train, test, seed=0)
    assert result["present"]["overall"] < 0.05
    # the validation split chose a strong ridge: nothing to fit
    assert result["ridge"]["lambda"] >= 1


def test_episode_split_never_shares_an_episode():
    eps = np.repeat(np.array([3, 7, 8, 11, 20, 21, 30]), [5, 1, 9, 4, 4, 6, 2])
    for seed in range(20):
        kept, held = episode_split(eps, 0.3, seed)
        assert len(kept) + len(held) == len(eps) and not np.intersect1d(kept, held).size
        assert set(eps[kept]).isdisjoint(eps[held]) and len(set(eps[held])) == 2  # round(0.3 x 7)
    assert [list(episode_split(eps, 0.3, 4)[1])] == [list(episode_split(eps, 0.3, 4)[1])]  # seeded
    assert len({tuple(episode_split(eps, 0.3, s)[1]) for s in range(20)}) > 1
    with pytest.raises(ValueError, match="at least 2 episodes"):
        episode_split(np.zeros(5, int), 0.2, 0)
    x, y, e, train, test = synthetic(signal=True)
    with pytest.raises(ValueError, match="share an episode"):
        probe_arrays(x, y, NAMES, OBJECTS, e, train, np.concatenate([test, train[:1]]))


def test_r2_is_pooled_and_none_where_nothing_varies():
    y = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0]])
    pred = np.array([[0.0, 2.0, 5.0], [2.0, 2.0, 5.0]])
    s = r2_scores(y, pred, ["a.pos.x", "a.pos.y", "a.pos.z"], {"a": [0, 1, 2]})
    assert s["entries"] == {"a.pos.x": 1.0, "a.pos.y": 0.0, "a.pos.z": None}  # y: the mean, no better
    assert s["objects"]["a"] == pytest.approx(1 - 2 / 4) and s["overall"] == s["objects"]["a"]
    ridge = fit_ridge(np.ones((4, 2)), np.arange(8.0).reshape(4, 2), [1.0])[0]  # constant features: the mean
    assert np.allclose(ridge.predict(np.ones((1, 2))), [[3.0, 4.0]])


def test_cli_without_environment_state_is_one_line(fixture_dataset, tmp_path, capsys):
    rc = main(["probe", "--dataset", str(fixture_dataset), "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "'observation.environment_state'" in err, err
    assert not (tmp_path / "p.json").exists()


@pytest.fixture(scope="module")
def env_dataset(tmp_path_factory):
    # The session fixture's episodes (same seed and sizes), with the environment state recorded.
    return make_fixture_dataset(
        tmp_path_factory.mktemp("envdata") / "fixture",
        n_episodes=12,
        length=24,
        image_size=32,
        n_tasks=2,
        seed=0,
        with_environment_state=True,
    )


def test_cli_probes_an_encoder_and_env_state_reads_back_exactly(env_dataset, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert (
        main(
            [
                "probe",
                "--dataset",
                str(env_dataset),
                "--image_size",
                "32",
                "--world_image_size",
                "32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["objects"] == ["block_1", "goal_1"] and result["encoder"]["name"] == "tiny-vjepa2"
    assert result["present"]["overall"] is not None and "future" not in result
    assert "block_1" in capsys.readouterr().out

    from world_modality.analysis.probe import probe_dataset
    from world_modality.config import build_config

    raw = probe_dataset(
        build_config({"dataset": str(env_dataset), "image_size": 32}), raw_env_state=True, progress=False
    )
    assert raw["present"]["overall"] > 0.999  # the targets are part of the input: the upper bound
    assert raw["upper_bound"] == UPPER_BOUND and result["upper_bound"] is None
    capsys.readouterr()
    args = ["probe", "--dataset", str(env_dataset), "--image_size", "32", "--world_encoder", "env_state"]
    assert main([*args, "--out", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if "overall" in line and UPPER_BOUND in line], printed
    assert json.loads((tmp_path / "s.json").read_text())["upper_bound"] == UPPER_BOUND


@pytest.mark.slow
def test_probe_of_a_trained_run_and_its_report(trained_e2, env_dataset, tmp_path, capsys):
    run = trained_e2.parent.parent
    assert main(["probe", "--checkpoint", str(trained_e2), "--dataset", str(env_dataset)]) == 0
    result = json.loads((run / "probe.json").read_text())
    fut = result["future"]
    assert fut["k"] == 4 and set(fut) == {"k", "prophet", "latent_copy_last", "true_future_latent", "copy_last"}
    assert result["test_episodes"] and set(result["test_episodes"]).isdisjoint(result["train_episodes"])
    printed = capsys.readouterr().out
    assert "pred z_t+k -> pos_t+4" in printed and "copy-last pos_t -> pos_t+4" in printed
    assert main(["probe", "--checkpoint", str(trained_e2), "--lr", "0.1"]) == 2
    assert "only --dataset and --seed" in capsys.readouterr().err

    from world_modality.analysis.report import write_report

    report = write_report([run], tmp_path / "report")
    md = report["report_md"].read_text()
    assert "What the world latent knows (probe)" in md and "pred z_t+k -> pos_t+4" in md
