"""Provenance, not identity: what the code's commit is, and that evaluations, training runs and generated datasets
record it without a later commit being refused where it continues their work, nor a dataset fingerprinting
otherwise because of it."""

import json
import subprocess

import pytest

from conftest import tiny_config
from world_modality import provenance as prov
from world_modality.config import ExperimentConfig
from world_modality.data.fixture import make_fixture_dataset
from world_modality.data.lerobot import load_dataset
from world_modality.toolchain import toolchain

A = {"commit": "aaaaaaa", "dirty": False}
B = {"commit": "bbbbbbb", "dirty": True}


def test_provenance_names_the_checkout_commit_and_code_commit_agrees():
    now = prov.provenance()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=prov.ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert now["commit"] == (head or "unknown") and now["dirty"] in (True, False, None)
    assert prov.code_commit() == now["commit"] + ("-dirty" if now["dirty"] else "")


def test_provenance_outside_a_checkout_is_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(prov, "ROOT", tmp_path)
    assert prov.provenance() == {"commit": "unknown", "dirty": None}
    assert prov.code_commit() == "unknown"


def test_each_later_commit_is_listed_once_in_order():
    first = prov.continued(None, A)
    assert first == {**A, "continued_by": []}
    assert prov.continued(first, A) == first  # the same code again adds nothing
    twice = prov.continued(prov.continued(first, B), A)
    assert twice == {**A, "continued_by": [B]}
    assert prov.commits(twice) == ["aaaaaaa", "bbbbbbb-dirty"]
    assert prov.commits(None) == []


# -- generated datasets -----------------------------------------------------------------------------------
def _dataset(root, monkeypatch, code):
    import world_modality.data.writer as writer

    monkeypatch.setattr(writer, "provenance", lambda: code)
    return make_fixture_dataset(root, n_episodes=2, length=4, image_size=8, seed=0, use_videos=False)


def test_a_dataset_records_its_commit_and_fingerprints_the_same_from_another_commit(tmp_path, monkeypatch):
    a = _dataset(tmp_path / "a", monkeypatch, A)
    b = _dataset(tmp_path / "b", monkeypatch, B)
    info_a = json.loads((a / "meta" / "info.json").read_text())
    assert info_a["provenance"] == {**A, "continued_by": []}
    assert json.loads((b / "meta" / "info.json").read_text())["provenance"]["commit"] == B["commit"]
    assert load_dataset(a).fingerprint() == load_dataset(b).fingerprint()
    # A dataset written before provenance existed (the writer's layout, no such key) keys the same caches.
    del info_a["provenance"]
    (a / "meta" / "info.json").write_text(json.dumps(info_a, indent=4))
    assert load_dataset(a).fingerprint() == load_dataset(b).fingerprint()
    # Everything else in info.json still counts.
    info_a["fps"] = 11
    (a / "meta" / "info.json").write_text(json.dumps({**info_a, "provenance": A}, indent=4))
    assert load_dataset(a).fingerprint() != load_dataset(b).fingerprint()


def test_a_resumed_generation_lists_each_commit_that_ran_its_attempts(tmp_path, monkeypatch):
    from world_modality.sim import generate as gen

    staging, log = tmp_path / "out.partial", tmp_path / "out.partial" / "attempts.jsonl"
    staging.mkdir()
    monkeypatch.setattr(prov, "provenance", lambda paths=("world_modality",): A)
    ran = [toolchain()]  # the software versions that ran attempts, listed once however many commits did
    assert gen._record_provenance(staging, log) == {**A, "continued_by": [], "toolchains": ran}
    monkeypatch.setattr(prov, "provenance", lambda paths=("world_modality",): B)
    assert gen._record_provenance(staging, log) == {**A, "continued_by": [B], "toolchains": ran}
    assert json.loads((staging / gen.PROVENANCE_FILE).read_text())["continued_by"] == [B]
    # Attempts staged by a version that kept no provenance came from an unknown commit.
    (staging / gen.PROVENANCE_FILE).unlink()
    log.write_text(json.dumps({"task_id": 0, "attempt": 0, "success": False}) + "\n")
    assert prov.commits(gen._record_provenance(staging, log)) == ["unknown", "bbbbbbb-dirty"]


# -- evaluation folders -----------------------------------------------------------------------------------
def test_an_evaluation_folder_lists_each_commit_that_ran_episodes_outside_its_identity(tmp_path):
    from world_modality.evaluate.closed_loop import folder_provenance
    from world_modality.evaluate.folder import check_same_evaluation

    out = tmp_path / "eval"
    out.mkdir()
    identity = {"checkpoint": "ckpt", "suite": "libero_spatial", "seed": 7}
    ran = [toolchain()]
    assert folder_provenance(out, A, runs=True) == {**A, "continued_by": [], "toolchains": ran}
    (out / "settings.json").write_text(json.dumps({"identity": identity, "provenance": prov.continued(None, A)}))
    (out / "episodes.jsonl").write_text(json.dumps({"task_id": 0, "init_index": 0, "success": True}) + "\n")
    check_same_evaluation(out, identity, out / "episodes.jsonl")  # another commit continues: not refused
    # Episodes were run before toolchains were recorded: only this run's is listed.
    assert folder_provenance(out, B, runs=True) == {**A, "continued_by": [B], "toolchains": ran}
    assert folder_provenance(out, B, runs=False) == {**A, "continued_by": []}  # ran nothing: not listed
    # Episodes written before folders recorded provenance are not credited to the commit continuing them.
    (out / "settings.json").write_text(json.dumps({"identity": identity}))
    assert prov.commits(folder_provenance(out, B, runs=True)) == ["unknown", "bbbbbbb-dirty"]


# -- training runs ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_resumed_by_a_later_commit_is_not_refused_and_lists_it(fixture_dataset, tmp_path, monkeypatch):
    import world_modality.train as train_mod

    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "provenance", lambda: A)
    first = train_mod.train(tiny_config(fixture_dataset, run, preset="E0", max_epochs=1, num_threads=1), progress=False)
    assert json.loads((first / "trainer_state.json").read_text())["provenance"] == A
    monkeypatch.setattr(train_mod, "provenance", lambda: B)
    last = train_mod.train(tiny_config(fixture_dataset, run, preset="E0", max_epochs=2, num_threads=1), progress=False)
    assert last != first
    saved = json.loads((run / "config.json").read_text())
    # Both commits trained under this one software stack, listed once (toolchain.py).
    assert saved["provenance"] == {**A, "continued_by": [B], "toolchains": [toolchain()]}
    assert json.loads((last / "trainer_state.json").read_text())["provenance"] == B
    assert ExperimentConfig.from_json(run / "config.json").train.max_epochs == 2  # still reads as a config
