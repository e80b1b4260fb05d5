"""The study report's numbers from episode records, without a simulator: starts and seeds per cell, the clustered
interval, missing runs, several contrasts with both interval kinds, protocols, arms and each stage's commit; and the
refusal of a damaged study folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from world_modality.config import ConfigError
from world_modality.study.test_study import _eval, _settings


def _run(evals: list[dict], suites: dict | None = None) -> dict:
    return {
        "evals": evals,
        "failed": [],
        "times": {},
        "suites": suites or {"libero_spatial": {"dataset": "d", "demos": {0: 2, 1: 2}}},
    }


def _table(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("|")]


def test_a_cell_counts_starts_and_seeds_and_clusters_repeated_starts(tmp_path):
    from world_modality.study.tables import render, results

    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0,1")
    wins = [True, False, True, False]  # both seeds agree on every start: 8 episodes, the evidence of 4
    evals = [_eval(e, seed, "libero_spatial", wins) for e in ("E0", "E2") for seed in (0, 1)]
    res = results(s, _run(evals))
    cell = res["standard"]["E0"]["libero_spatial"]
    assert (cell["k"], cell["n"], cell["starts"], cell["seeds"]) == (4, 8, 4, [0, 1])
    assert cell["per_seed"] == {"0": {"k": 2, "n": 4, "errors": 0}, "1": {"k": 2, "n": 4, "errors": 0}}
    assert cell["design_effect"] == pytest.approx(2.0)
    naive = cell["ci_pooled_wilson"]
    assert cell["ci"][1] - cell["ci"][0] > naive[1] - naive[0]  # the pooled n would overstate the evidence
    text = _table(render(s, res))[2].split(" | ")[1]
    assert text.startswith("4/8 = 50.0% [") and "; 4 starts; seed 0: 2/4, seed 1: 2/4" in text


def test_missing_runs_are_named_and_an_empty_cell_is_not_run(tmp_path):
    from world_modality.study.tables import render, results

    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0,1,2")
    evals = [
        _eval("E0", 0, "libero_spatial", [True, False, False, False]),
        {"train_suite": "libero_spatial", "experiment": "E0", "seed": 1, "suite": "libero_spatial", "not_run": "x"},
        _eval("E0", 2, "libero_spatial", [], errors=2),  # only errors: contributes nothing to the rate
        _eval("E2", 0, "libero_spatial", [], errors=3),
    ]
    res = results(s, _run(evals))
    e0 = res["standard"]["E0"]["libero_spatial"]
    assert e0["n"] == 4 and e0["errors"] == 2
    assert e0["missing"] == [
        {"seed": 1, "suite": "libero_spatial", "why": "x"},
        {"seed": 2, "suite": "libero_spatial", "why": "all 2 episodes ended in errors"},
    ]
    assert res["standard"]["E2"]["libero_spatial"]["not_run"] == "all 3 episodes ended in errors"
    table = _table(render(s, res))
    assert "; seed 1 missing (x); seed 2 missing (all 2 episodes ended in errors)" in table[2].split(" | ")[1]
    e2 = table[3].split(" | ")
    assert e2[1] == "not run (all 3 episodes ended in errors)" and e2[-1].startswith("not run (")
    assert not any("0/0" in ln for ln in table)


def test_contrasts_name_the_primary_and_holm_adjust_the_rest(tmp_path):
    from world_modality.study.contrasts import pairs_of
    from world_modality.study.tables import render, results

    three = [("E0", "E2", "primary"), ("E2-Present", "E2", "secondary"), ("E0", "E2-Present", "secondary")]
    assert [c[:3] for c in pairs_of(("E0", "E2", "E2-Present"))] == three
    assert [c[:3] for c in pairs_of(("E2-Present", "E2", "E0"))] == three  # named, whatever the order given
    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0,1", "--experiments", "E0,E2,E2-Present")
    rows = {"E0": [False] * 8, "E2": [True] * 6 + [False] * 2, "E2-Present": [True] * 3 + [False] * 5}
    evals = [_eval(e, seed, "libero_spatial", w) for e, w in rows.items() for seed in (0, 1)]
    res = results(s, _run(evals))
    cs = res["contrasts"]
    assert [(c["role"], c["b"], c["a"]) for c in cs] == [
        ("primary", "E2", "E0"),
        ("secondary", "E2", "E2-Present"),
        ("secondary", "E2-Present", "E0"),
    ]
    assert "p_holm" not in cs[0]["average"]
    raw = sorted(c["average"]["p"] for c in cs[1:])
    assert sorted(c["average"]["p_holm"] for c in cs[1:]) == pytest.approx(
        [min(1, 2 * raw[0]), max(2 * raw[0], raw[1])]
    )
    assert res["paired"]["b"] == "E2" and res["paired"]["average"]["diff"] == pytest.approx(0.75)
    for c in cs:  # two seeds per arm: a method-level interval, no method-level p
        m = c["average"]["method_level"]
        assert m["p"] is None and m["p_note"] == "p not given: fewer than 3 seeds per arm"
    mdd = cs[0]["average"]["mdd"]
    assert mdd["kind"] == "derived" and mdd["n"] == 8 and mdd["discordance"] == pytest.approx(0.75)
    text = render(s, res)
    assert "| E2 − E0 | does the world modality help | primary | +75.0 pts [" in text
    assert "| E2 − E2-Present | foresight, given the same history and encoder | secondary | " in text
    assert "(Holm " in text and "p not given: fewer than 3 seeds per arm" in text
    assert "Smallest detectable difference (derived, 80% power" in text and "n·δ² = " in text


def test_pairs_under_different_protocols_are_refused_and_listed(tmp_path):
    from world_modality.study.tables import render, results

    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0,1")
    evals = [_eval(e, seed, "libero_spatial", [True, False, True, True]) for e in ("E0", "E2") for seed in (0, 1)]
    for r in evals:  # E0's seed 1 ran with another step limit: its starts pair with nothing
        limit = 100 if (r["experiment"], r["seed"]) == ("E0", 1) else 220
        r["protocol"] = {"suite": "libero_spatial", "step_limit": limit, "seed": 7}
    res = results(s, _run(evals))
    avg = res["paired"]["average"]
    assert (avg["n_pairs"], avg["n_refused"]) == (4, 4)
    assert avg["refused"][0]["differs"] == ["step_limit"]
    text = render(s, res)
    assert "### Pairs refused: the two evaluations ran under different protocols" in text
    assert "step limit 100 (E0) vs 220 (E2)" in text.split("### Pairs refused")[1]
    for r in evals:
        r["protocol"]["step_limit"] = 100 if r["experiment"] == "E0" else 220
    none_left = results(s, _run(evals))["paired"]["average"]
    assert "diff" not in none_left and none_left["n_refused"] == 8
    assert "no pairs (8 refused: other protocol)" in render(s, results(s, _run(evals)))


def test_arms_name_their_encoder_backbone_and_action_chunking(tmp_path):
    from world_modality.study.tables import render, results

    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0")
    evals = [_eval(e, 0, "libero_spatial", [True, False]) for e in ("E0", "E2")]
    evals[1]["arm"] = {
        "world_encoder": "tiny V-JEPA-style encoder, random weights",
        "backbone": "tiny-qwen2.5-vl, random init",
        "chunk_size": 8,
        "replan_every": 2,
        "memory_mode": "predicted",
        "world_encoder_weights": "random",
        "world_encoder_id": "tiny-vjepa2-m4-s32-abc",
    }
    res = results(s, _run(evals))
    assert res["arms"]["E0"]["world_encoder"] == "none" and res["arms"]["E0"]["replan_every"] == 4  # chunk // 2
    assert res["arms"]["E0"]["memory_mode"] == "none"  # no world stream: no memory mode to name
    assert res["arms"]["E2"]["replan_every"] == 2  # as evaluated
    table = _table(render(s, res))
    assert table[2].startswith("| E0 (world: none; backbone: tiny-qwen2.5-vl, random init) | ")
    assert table[3].startswith("| E2 (world: tiny V-JEPA-style encoder, random weights; backbone: ")
    assert (
        "| E2 | tiny V-JEPA-style encoder, random weights | tiny-qwen2.5-vl, random init | 8 | 2 | predicted | "
        "random (tiny-vjepa2-m4-s32-abc) |" in table
    )
    assert any(row.startswith("| E0 | none | ") and row.endswith(" | none | none |") for row in table)


def test_stage_commits_are_listed_and_a_table_built_across_commits_says_so(tmp_path):
    from world_modality.study.tables import render, results

    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0")
    evals = [_eval(e, 0, "libero_spatial", [True, False]) for e in ("E0", "E2")]
    evals[0]["provenance"] = {"train": {"commit": "aaa1111", "dirty": False}, "eval": {"commit": "bbb2222"}}
    evals[1]["provenance"] = {
        "train": None,
        "eval": {"commit": "bbb2222", "dirty": False, "continued_by": [{"commit": "ccc3333", "dirty": True}]},
    }
    suites = {"libero_spatial": {"dataset": "d", "demos": {0: 1}, "provenance": {"commit": "aaa1111", "dirty": True}}}
    res = results(s, _run(evals, suites))
    prov = res["provenance"]
    assert prov["train"] == {"libero_spatial/E0/0": "aaa1111", "libero_spatial/E2/0": "not recorded"}
    assert prov["eval"]["libero_spatial/E2/0/libero_spatial"] == "bbb2222, ccc3333-dirty"
    assert prov["datasets"] == {"libero_spatial": "aaa1111-dirty"}
    assert prov["commits"] == ["aaa1111", "aaa1111-dirty", "bbb2222", "ccc3333-dirty"]
    text = render(s, res)
    assert text.splitlines()[2].startswith("**Built across commits: aaa1111, aaa1111-dirty, bbb2222, ccc3333-dirty")
    assert "- not recorded: training runs libero_spatial/E2/0" in text
    one = results(s, _run([_eval("E0", 0, "libero_spatial", [True])]))
    assert "Built across" not in render(s, one) and "not recorded" in render(s, one)


def test_records_read_provenance_defensively(tmp_path):
    from world_modality.study.records import eval_protocol, read_provenance

    good, bad, none = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "none.json"
    good.write_text(json.dumps({"provenance": {"commit": "abc1234", "dirty": True, "continued_by": []}}))
    bad.write_text("{not json")
    none.write_text(json.dumps(["a list"]))
    assert read_provenance(bad, none, tmp_path / "absent.json") is None
    assert read_provenance(bad, good) == {"commit": "abc1234", "dirty": True, "continued_by": []}
    settings = {"step_limit": 1, "seed": 1, "identity": {"step_limit": 220, "seed": 7, "replan_every": 4}}
    assert eval_protocol(settings, "libero_spatial") == {"suite": "libero_spatial", "step_limit": 220, "seed": 7}


@pytest.mark.parametrize("content", ['{"suites": [', "[1, 2]", b"\xff\xfe"], ids=["torn", "not-an-object", "binary"])
def test_a_damaged_study_settings_file_stops_the_study(tmp_path, content):
    from world_modality.study.settings import SETTINGS_FILE, check_same_study

    s = _settings(tmp_path, "--seeds", "0")
    path = Path(s.out) / SETTINGS_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=f"{path} is damaged .*expected the JSON object of study settings"):
        check_same_study(s)
    assert path.read_bytes() == before  # never replaced by the new flags


def test_a_damaged_study_settings_file_is_one_line_and_nothing_runs(tmp_path, capsys):
    from world_modality.cli import main

    out = tmp_path / "s"
    out.mkdir()
    (out / "study_settings.json").write_text("{torn")
    assert main(["study", "--out", str(out), "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study_settings.json is damaged" in err[0] and "another --out" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["study_settings.json"]


def test_damaged_stage_times_are_refused_not_overwritten(tmp_path):
    from world_modality.study.stages import Times

    (tmp_path / "times.json").write_text('{"train/x": "soon"}')
    with pytest.raises(ConfigError, match="times.json is damaged"):
        Times(tmp_path)
    assert (tmp_path / "times.json").read_text() == '{"train/x": "soon"}'


def test_a_trained_run_is_read_back_for_its_commits_and_arm(tmp_path):
    from world_modality.config import build_config
    from world_modality.study.records import checkpoint_arm, train_provenance

    ckpt = tmp_path / "run" / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    cfg = build_config({"chunk_size": 6}, preset="E2")
    cfg.to_json(ckpt / "config.json")
    assert train_provenance(ckpt) is None
    record = {"commit": "aaa1111", "dirty": False, "continued_by": [{"commit": "bbb2222", "dirty": False}]}
    (tmp_path / "run" / "config.json").write_text(json.dumps({**cfg.to_dict(), "provenance": record}))
    assert train_provenance(ckpt) == record  # the run's config lists every commit that trained it
    arm = checkpoint_arm(ckpt, None)
    assert arm["world_encoder"] == "tiny V-JEPA-style encoder, random weights"
    assert (arm["chunk_size"], arm["replan_every"]) == (6, 3)
    assert checkpoint_arm(tmp_path / "absent", 2) is None


def test_a_cut_down_study_says_so_above_its_table_and_few_starts_warn_off_the_interval(tmp_path):
    from world_modality.study.tables import protocol_line, render, results

    small = _settings(tmp_path, "--suites", "libero_spatial", "--tasks", "0", "--episodes-per-task", "2")
    line = protocol_line(small)
    assert line.startswith("**Smaller than the public protocol**") and "tasks 0 of 10" in line
    assert "stored states 0-1 per task" in line and "averages only the suites run" in line
    held_out = _settings(tmp_path, "--init-states", "10-49", "--max-steps", "12")
    assert "stored states 10-49 per task, a 12-step limit" in protocol_line(held_out)
    full = _settings(tmp_path, "--suites", "libero_spatial,libero_object,libero_goal,libero_10")
    assert protocol_line(full).endswith("This is the public protocol.")
    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0")
    evals = [_eval(e, 0, "libero_spatial", [e == "E2", False, e == "E2", False]) for e in ("E0", "E2")]
    text = render(s, results(s, _run(evals)))
    assert text.index("**Smaller than the public protocol**") < text.index("| Experiment |")
    assert "**Few starts:** the primary contrast rests on 4 distinct starts" in text
