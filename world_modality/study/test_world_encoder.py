"""The study's world-encoder pretraining stage, with stand-ins for the simulator stages and a real, fixture-sized
pretrain-world: which arm uses which encoder (and records it), the stage cached, resumed, timed and hashed, shards
sharing one encoder, and the settings refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from world_modality.cli import main
from world_modality.config import ConfigError

ARMS = "E0,E2,E2-Present,E2-State"
BASE = ["--suites", "libero_spatial", "--tasks", "0,1", "--experiments", ARMS, "--seeds", "0"]
BASE += ["--episodes-per-task", "2", "--image-size", "32", "--world-image-size", "32"]
STUDY = [*BASE, "--pretrain-steps", "4", "--pretrain-batch-size", "4"]


def _settings(out: Path, *extra: str, base=STUDY):
    from world_modality.cli import build_parser
    from world_modality.study.settings import settings_from_args

    return settings_from_args(build_parser().parse_args(["study", *base, "--out", str(out), *extra]))


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def stages(tmp_path, monkeypatch, fixture_dataset):
    """Generation returns the fixture dataset; training writes a checkpoint whose config.json is the run's real config
    and whose policy.json names its encoder's weights (as training records them); evaluation reads the arm back with
    the study's own reader. Pretraining is real (4 steps)."""
    from world_modality.study import stages as st
    from world_modality.study.records import checkpoint_arm
    from world_modality.study.settings import run_config
    from world_modality.world import pretrain as pretrain_module

    trained: dict[tuple, object] = {}
    calls = []
    real = pretrain_module.pretrain

    def pretrain(settings, out, **kw):
        calls.append(Path(out))
        return real(settings, out, **kw)

    def train(s, suite, experiment, seed, dataset):
        run = st.run_dir(s, suite, experiment, seed)
        cfg = run_config(s, experiment, suite, seed, Path(dataset), run)
        path = cfg.world.world_encoder_path
        # What training would find: the encoder is whole before any run that uses it starts.
        trained[(suite, experiment, seed)] = (cfg, path and (Path(path) / "model.safetensors").exists())
        ckpt = run / "checkpoints" / "step-1"
        ckpt.mkdir(parents=True, exist_ok=True)
        cfg.to_json(ckpt / "config.json")
        weights = _sha(Path(path) / "model.safetensors")[:12] if path else "fixed-init"
        encoder = {"name": cfg.world.world_encoder, "encoder_id": f"{cfg.world.world_encoder}-m4-s32-{weights}"}
        (ckpt / "policy.json").write_text(json.dumps({"world_encoder": encoder}))
        (ckpt / "model.safetensors").write_bytes(f"{suite}/{experiment}/{seed}".encode())
        return ckpt

    def evaluate(s, ckpt, train_suite, experiment, seed, suite, tasks, n, init_states=None):
        wins = lambda t, k: (t + k + seed + len(experiment)) % 3 != 0  # noqa: E731
        eps = [{"suite": suite, "task_id": t, "init_index": k, "success": wins(t, k)} for t in tasks for k in range(n)]
        protocol = {"suite": suite, "step_limit": 20, "seed": 0}
        return {"episodes": eps, "errors": [], "protocol": protocol, "arm": checkpoint_arm(ckpt, None)}

    demos = {0: 6, 1: 6}
    monkeypatch.setattr(st, "generate_suite", lambda s, suite, tasks: {"dataset": str(fixture_dataset), "demos": demos})
    monkeypatch.setattr(st, "train_run", train)
    monkeypatch.setattr(st, "eval_run", evaluate)
    monkeypatch.setattr(pretrain_module, "pretrain", pretrain)
    return {"root": tmp_path, "data": fixture_dataset, "trained": trained, "calls": calls}


def _study(out: Path, *extra: str) -> int:
    return main(["study", *STUDY, "--out", str(out), *extra])


def test_arms_use_the_encoder_the_study_gives_them_and_record_it(stages):
    from world_modality.study.world_encoder import encoder_dir

    root = stages["root"]
    assert _study(root / "s", "--data", str(root / "shared")) == 0
    s = _settings(root / "s", "--data", str(root / "shared"))
    encoder = encoder_dir(s, stages["data"])
    assert encoder.parent == root / "shared" / "world-encoders" and encoder.name == "fixture-32px-s4-b4-seed0"
    trained = stages["trained"]
    paths = {e: cfg.world.world_encoder_path for (_, e, _), (cfg, _) in trained.items()}
    assert paths == {"E0": None, "E2": str(encoder), "E2-Present": str(encoder), "E2-State": None}
    assert all(found for (_, e, _), (_, found) in trained.items() if paths[e])  # pretrained before training
    cfgs = {e: cfg for (_, e, _), (cfg, _) in trained.items()}
    assert cfgs["E2-State"].world.world_encoder == "env_state" and cfgs["E2-Present"].policy.memory_mode == "present"

    study = json.loads((root / "s" / "study.json").read_text())
    arms = study["results"]["arms"]
    assert {e: a["world_encoder_weights"] for e, a in arms.items()} == {
        "E0": "none",
        "E2": "pretrained",
        "E2-Present": "pretrained",
        "E2-State": "state",
    }
    one = f"vjepa2-m4-s32-{_sha(encoder / 'model.safetensors')[:12]}"
    assert arms["E2"]["world_encoder_ids"] == arms["E2-Present"]["world_encoder_ids"] == [one]
    assert arms["E0"]["world_encoder_ids"] == []  # no world stream: the unused encoder it built is not its
    text = "tiny V-JEPA-style encoder, pretrained by pretrain-world on fixture (4 steps, batch 4, seed 0)"
    assert arms["E2"]["world_encoder"] == text
    assert [(c["b"], c["a"], c["role"]) for c in study["results"]["contrasts"]] == [
        ("E2", "E0", "primary"),
        ("E2", "E2-Present", "secondary"),
        ("E2-Present", "E0", "secondary"),
        ("E2-State", "E0", "secondary"),
    ]
    # Timed apart from training, hashed, and named in the report.
    assert study["seconds"]["pretrain/libero_spatial"] > 0 and "train/libero_spatial/E2/0" in study["seconds"]
    hashes = json.loads((root / "s" / "artifacts.json").read_text())["world_encoders"]["libero_spatial"]
    assert hashes["name"] == encoder.name and hashes["sha256"]["model.safetensors"] == _sha(
        encoder / "model.safetensors"
    )
    report = (root / "s" / "report.md").read_text()
    assert "## World-encoder pretraining" in report
    assert f"| libero_spatial | {encoder.name} | 4 | 4 | 0 | " in report
    assert "pretrain: " in report.split("## Stage wall times")[1]
    assert "[pretrain-world]" in (root / "s" / "runs" / "libero_spatial" / "pretrain-world.log").read_text()

    # --world-encoder random: E2 and E2-Present keep the tiny encoder's fixed init, and nothing is pretrained.
    stages["trained"].clear()
    assert main(["study", *BASE, "--world-encoder", "random", "--out", str(root / "r")]) == 0
    assert all(cfg.world.world_encoder_path is None for cfg, _ in stages["trained"].values())
    arms = json.loads((root / "r" / "study.json").read_text())["results"]["arms"]
    assert arms["E2"]["world_encoder_weights"] == arms["E2-Present"]["world_encoder_weights"] == "random"
    assert not any(k.startswith("pretrain/") for k in json.loads((root / "r" / "times.json").read_text()))


def test_the_stage_resumes_an_interrupted_pretraining_is_cached_and_refuses_a_changed_encoder(stages, capsys):
    from world_modality.study.stages import encoder_users
    from world_modality.study.world_encoder import encoder_dir, pretrain_settings
    from world_modality.world.pretrain import pretrain

    root = stages["root"]
    # An uninterrupted pretraining, in its own --data.
    assert _study(root / "whole", "--data", str(root / "d1")) == 0
    whole = encoder_dir(_settings(root / "whole", "--data", str(root / "d1")), stages["data"])

    # Another study whose pretraining was killed after 2 of its 4 steps (its checkpoints are written every step).
    s = _settings(root / "s", "--data", str(root / "d2"))
    out = encoder_dir(s, stages["data"])
    users = encoder_users(s, "libero_spatial", str(stages["data"]))
    assert sorted(users) == ["E2", "E2-Present"]
    half = dataclasses.replace(pretrain_settings(s, stages["data"], users), steps=2)
    pretrain(half, out, progress=False, log=lambda _: None)
    assert not (out / "checkpoints" / "step-0000004").exists()
    stages["calls"].clear()
    assert _study(root / "s", "--data", str(root / "d2")) == 0
    assert stages["calls"] == [out]
    assert "resuming at step 2/4" in (root / "s" / "runs" / "libero_spatial" / "pretrain-world.log").read_text()
    # Each step's draws come from (seed, step): the resumed encoder is the uninterrupted one, bit for bit.
    assert _sha(out / "model.safetensors") == _sha(whole / "model.safetensors")

    # A rerun finds it finished: not pretrained again, its time accumulates, its hash is checked.
    first = json.loads((root / "s" / "times.json").read_text())["pretrain/libero_spatial"]
    stages["calls"].clear()
    assert _study(root / "s", "--data", str(root / "d2")) == 0
    assert stages["calls"] == []
    assert json.loads((root / "s" / "times.json").read_text())["pretrain/libero_spatial"] >= first

    # An encoder that changed since the runs used it is refused (exit 2), not mixed with their results.
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert _study(root / "s", "--data", str(root / "d2")) == 2
    err = capsys.readouterr().err
    assert f"world encoder {out} of libero_spatial differs from the one this folder's runs" in err
    assert "sha256 of model.safetensors" in err and "Point --data at the folder" in err


def test_shards_share_one_encoder_through_data_and_merge_refuses_two(stages):
    from world_modality.study.shards import shard_runs
    from world_modality.study.stages import shard_plan

    root, shared = stages["root"], str(stages["root"] / "shared")
    s = _settings(root / "x")
    # Runs sorted: E0, E2, E2-Present, E2-State; a shard of E0 and E2-State alone needs no pretraining.
    assert shard_runs(s, (1, 2)) == [("libero_spatial", "E0", 0), ("libero_spatial", "E2-Present", 0)]
    plain = [("libero_spatial", "E0", 0), ("libero_spatial", "E2-State", 0)]
    assert not [st for st in shard_plan(s, plain) if st[0] == "pretrain"]
    assert ("pretrain", "libero_spatial") in shard_plan(s, shard_runs(s, (1, 2)))

    stages["calls"].clear()
    assert _study(root / "s1", "--shard", "1/2", "--data", shared) == 0
    assert _study(root / "s2", "--shard", "2/2", "--data", shared) == 0
    assert len(stages["calls"]) == 1  # the second shard found the first one's encoder in --data
    merged = root / "merged"
    assert main(["study", "merge", str(root / "s1"), str(root / "s2"), "--out", str(merged)]) == 0
    arms = json.loads((merged / "study.json").read_text())["results"]["arms"]
    assert arms["E2"]["world_encoder_ids"] == arms["E2-Present"]["world_encoder_ids"]
    assert "## World-encoder pretraining" in (merged / "report.md").read_text()

    # A shard that pretrained an encoder of its own (another machine, other bits) does not merge with the other.
    hashes = json.loads((root / "s2" / "artifacts.json").read_text())
    hashes["world_encoders"]["libero_spatial"]["sha256"]["model.safetensors"] = "f" * 64
    (root / "s2" / "artifacts.json").write_text(json.dumps(hashes))
    from world_modality.study.merge import merge

    with pytest.raises(ConfigError, match=r"different pretrained world encoders for libero_spatial: .*s1, f{16} in"):
        merge([root / "s1", root / "s2"], root / "m")
    assert not (root / "m").exists()


def test_encoder_settings_join_the_identity_only_when_an_arm_uses_them_and_bad_ones_are_refused(tmp_path):
    from world_modality.study.records import PRETRAIN_SETTINGS_FILE
    from world_modality.study.settings import check_same_study, command_line
    from world_modality.study.world_encoder import PATCH, PRETRAIN_BUDGETS
    from world_modality.world.pretrain_checkpoint import SETTINGS_FILE
    from world_modality.world.vjepa2_loading import tiny_vjepa2_config

    assert PATCH == tiny_vjepa2_config(4, 64).patch_size and PRETRAIN_SETTINGS_FILE == SETTINGS_FILE
    base = ["--suites", "libero_spatial", "--seeds", "0"]
    s = _settings(tmp_path / "s", "--experiments", "E0,E2", base=base)
    assert (s.world_encoder, s.pretrain_steps, s.pretrain_batch_size) == ("pretrained", 2000, 32)
    assert {k: s.identity()[k] for k in ("world_encoder", "pretrain_steps", "pretrain_seed")} == {
        "world_encoder": "pretrained",
        "pretrain_steps": PRETRAIN_BUDGETS["cpu"].steps,
        "pretrain_seed": 0,
    }
    tiny = ("--backbone", "tiny-qwen2.5-vl", "--world-encoder", "pretrained")  # gpu's real models need weights
    gpu = _settings(tmp_path / "s", "--experiments", "E0,E2", "--budget", "gpu", *tiny, base=base)
    assert (gpu.pretrain_steps, gpu.pretrain_batch_size) == (5000, 64)
    # No arm uses a pretrained encoder: none of it is in the identity, so such a study keeps the identity it had.
    for extra in (["--experiments", "E0,E2-State"], ["--experiments", "E0,E2", "--world-encoder", "random"]):
        plain = _settings(tmp_path / "s", *extra, base=base)
        assert not {"world_encoder", "pretrain_steps"} & set(plain.identity()) and plain.pretrain_steps is None
        assert "--pretrain" not in command_line(plain)
    mixed = _settings(tmp_path / "s", "--experiments", "E0,E2,E2-Pretrained", "--world-encoder", "random", base=base)
    assert mixed.identity()["world_encoder"] == "random" and mixed.identity()["pretrain_steps"] == 2000

    from world_modality.cli import build_parser
    from world_modality.study.settings import settings_from_args

    flags = [*base, "--experiments", "E0,E2-Present", "--pretrain-steps", "30", "--pretrain-seed", "3"]
    s = _settings(tmp_path / "s", *flags, base=[])
    assert settings_from_args(build_parser().parse_args(command_line(s).split()[1:])) == s

    for extra, said in [
        (["--experiments", "E0,E2,E2-Pretrained"], "one arm under --world-encoder pretrained"),
        (["--experiments", "E0,E2", "--pretrain-steps", "0"], "--pretrain-steps must be >= 1, got 0"),
        (["--experiments", "E0,E2", "--pretrain-batch-size", "-2"], "--pretrain-batch-size must be >= 1, got -2"),
        (["--experiments", "E0,E2", "--pretrain-seed", "-1"], "--pretrain-seed must be >= 0, got -1"),
        (["--experiments", "E0,E2-State", "--pretrain-steps", "9"], "--pretrain-steps given, but no arm of"),
        (["--experiments", "E0,E2", "--world-image-size", "16"], "--world-image-size 16: pretraining .* at least 32"),
        (["--experiments", "E0,E2", "--world-image-size", "40"], "--world-image-size 40: .*multiple of its patch"),
    ]:
        with pytest.raises(ConfigError, match=said):
            _settings(tmp_path / "s", *extra, base=base)
    # The same refusals from the command line: exit 2, nothing written.
    assert (
        main(["study", *base, "--experiments", "E0,E2-State", "--pretrain-steps", "9", "--out", str(tmp_path / "b")])
        == 2
    )
    assert not (tmp_path / "b").exists()

    # A folder of a study that ran E2 with the random encoder before --world-encoder existed: its identity has no
    # such key. Continued without the flag (now pretrained) it is refused, naming the flag that continues it.
    old = _settings(tmp_path / "old", "--experiments", "E0,E2", "--world-encoder", "random", base=base)
    check_same_study(old)
    assert "world_encoder" not in json.loads((tmp_path / "old" / "study_settings.json").read_text())
    with pytest.raises(
        ConfigError, match=r"--world-encoder: not given there, 'pretrained' now.*add --world-encoder random"
    ):
        check_same_study(_settings(tmp_path / "old", "--experiments", "E0,E2", base=base))
    check_same_study(old)  # with the flag it continues
