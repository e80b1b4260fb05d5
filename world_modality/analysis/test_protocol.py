"""Tests of what the report merges and pairs: pairs only under one protocol (step limit, evaluation seed), rates only
over evaluations of one identity, and the evaluated checkpoint step named beside every success rate."""

import json

import pytest

from world_modality.analysis.pooling import pooled_paired
from world_modality.analysis.report import write_report
from world_modality.analysis.test_report import E0_OUT, E2_OUT, SUITE, _episode, _make_run, _write_jsonl
from world_modality.analysis.test_report_seeds import SWEEP, _make_seed_run


def _identity(preset, step=40, seed=0, limit=220, replan=4, memory=None):
    return {
        "checkpoint": f"/runs/{preset}/checkpoints/step-{step}",
        "checkpoint_step": step,
        "weights_sha256": f"{preset}-{step}",
        "suite": SUITE,
        "memory": memory or ("none" if preset == "E0" else "predicted"),
        "seed": seed,
        "step_limit": limit,
        "replan_every": replan,
        "allow_train_overlap": False,
    }


def _settings(folder, identity):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({"suite": SUITE, "identity": identity}))


def _reseed(folder, seed):
    """Rewrite every episode file of an eval folder as if evaluated with another evaluation seed."""
    for f in folder.glob("episodes*.jsonl"):
        _write_jsonl(f, [{**json.loads(x), "seed": seed} for x in f.read_text().splitlines()])


def test_seed_sweep_refuses_pairs_run_under_another_step_limit(tmp_path):
    dirs = {(p, s): _make_seed_run(tmp_path, p, s, out) for (p, s), out in SWEEP.items()}
    for (p, s), d in dirs.items():
        mode = "predicted" if p == "E2" else "none"
        # E0 seed 0 ran with --max_steps 100; every other run at the suite's 220.
        _settings(d / "eval" / mode, _identity(f"{p}{s}", limit=100 if (p, s) == ("E0", 0) else 220))
    res = write_report(list(dirs.values()), tmp_path / "out")
    pc = res["paired_pooled"]
    shared0 = set(SWEEP[("E0", 0)]) & set(SWEEP[("E2", 0)])
    shared1 = set(SWEEP[("E0", 1)]) & set(SWEEP[("E2", 1)])
    assert pc["n_pairs"] == len(shared1) and list(pc["per_seed"]) == [1]
    assert pc["n_refused"] == len(shared0)
    (group,) = pc["refused"]  # one row per pair of protocols, not one per start
    assert group["n"] == len(shared0) and group["differs"] == ["step_limit"]
    assert (group["a"]["step_limit"], group["b"]["step_limit"]) == (100, 220) and group["key"][0] == 0
    assert pc["unpaired_keys"] == {"a": 1, "b": 0}  # refused starts are not counted as unpaired
    assert pc["protocol_note"] is None and pc["protocols"] == [{"suite": SUITE, "seed": 0, "step_limit": 220}]
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"> **WARNING:** {len(shared0)} shared start(s) of E2 and E0 were run under different protocols" in md
    assert "step limit 100 (E0) vs 220 (E2)" in md
    assert "identical (suite, task, initial state) episodes under one protocol (step limit 220" in md


def test_per_run_comparison_refuses_another_evaluation_seed_and_says_identical_only_when_protocols_match(tmp_path):
    e0 = _make_run(tmp_path, "E0", False, E0_OUT)
    e2 = _make_run(tmp_path, "E2", True, E2_OUT)
    _settings(e0 / "eval" / "none", _identity("E0", seed=7, replan=8))
    _reseed(e0 / "eval" / "none", 7)
    _settings(e2 / "eval" / "predicted", _identity("E2", seed=0))
    res = write_report([e0, e2], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert res["paired"] is None  # every shared start was run under another seed
    assert "No paired comparison: E0 and E2 share no finished closed-loop" in md
    assert "evaluation seed 7 (E0) vs 0 (E2)" in md and "identical" not in md

    # Under one protocol the pairs stand; replanning is the arm's own and may differ, and the report shows it.
    _settings(e0 / "eval" / "none", _identity("E0", seed=0, replan=8))
    _reseed(e0 / "eval" / "none", 0)
    res = write_report([e0, e2], tmp_path / "out2")
    md = (tmp_path / "out2" / "report.md").read_text()
    assert res["paired"]["n_pairs"] == len(set(E0_OUT) & set(E2_OUT)) and res["paired"]["n_refused"] == 0
    assert "episodes under one protocol (step limit 220, evaluation seed 0, suite libero_spatial)" in md
    assert "E0 replans every 8 frame(s)" in md and "E2 replans every 4 frame(s)" in md

    # A side without a recorded protocol pairs as before, and the report says so instead of "identical".
    (e0 / "eval" / "none" / "settings.json").unlink()
    res = write_report([e0, e2], tmp_path / "out3")
    md = (tmp_path / "out3" / "report.md").read_text()
    assert res["paired"]["n_pairs"] == len(set(E0_OUT) & set(E2_OUT))
    assert res["paired"]["protocol_note"] == "protocol not recorded for: E0"
    assert "protocol not recorded for: E0" in md and "identical" not in md


def _study_run(preset, seed, outcomes, protocol=None):
    eps = [_episode(t, i, ok, "none", preset) for (t, i), ok in outcomes.items()]
    run = {"preset": preset, "train_seed": seed, "head": eps, "head_errors": []}
    return run if protocol is None else {**run, "protocol": protocol}


def test_pooled_paired_takes_each_runs_protocol():
    base = {"step_limit": 220, "seed": 0, "suite": SUITE}
    runs = [
        _study_run("E0", 0, SWEEP[("E0", 0)], {**base, "step_limit": 100}),
        _study_run("E2", 0, SWEEP[("E2", 0)], base),
        _study_run("E0", 1, SWEEP[("E0", 1)], base),
        _study_run("E2", 1, SWEEP[("E2", 1)], {**base, "seed": 3}),
    ]
    assert pooled_paired(runs, ("E0", "E2")) is None  # no pair left under one protocol
    runs[3]["protocol"] = {**base, "render": "egl"}  # a field recorded since the other side ran: not comparable
    p = pooled_paired(runs, ("E0", "E2"))
    assert p["n_pairs"] == len(set(SWEEP[("E0", 1)]) & set(SWEEP[("E2", 1)]))
    assert [g["differs"] for g in p["refused"]] == [["step_limit"]]
    assert p["protocol_note"] == "recorded by one side only: render"
    runs[3]["protocol"] = base
    assert pooled_paired(runs, ("E0", "E2"))["protocol_note"] is None
    del runs[0]["protocol"]  # older records: they pair as before, and the result names them
    p = pooled_paired(runs, ("E0", "E2"))
    assert p["n_pairs"] == 20 and p["n_refused"] == 0
    assert p["protocol_note"] == "protocol not recorded for: E0 training seed 0"


def _smoke_beside_full(tmp_path, smoke_outcomes, smoke_step=40):
    run = _make_run(tmp_path, "E2", True, E2_OUT)
    _settings(run / "eval" / "predicted", _identity("E2", step=40))
    smoke = run / "eval" / "smoke"
    _write_jsonl(
        smoke / "episodes.jsonl",
        [{**_episode(t, i, ok, "predicted", "E2"), "seed": 1} for (t, i), ok in smoke_outcomes.items()],
    )
    _settings(smoke, _identity("E2", step=smoke_step, seed=1, limit=10))
    return run


def test_report_merges_only_evaluations_of_one_identity_and_names_the_checkpoint_step(tmp_path):
    run = _smoke_beside_full(tmp_path, {(0, i): True for i in range(4)})
    res = write_report([run], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    e = res["experiments"]["E2"]
    assert (e["n"], e["k"]) == (len(E2_OUT), sum(E2_OUT.values()))  # the smoke test is in no rate
    (apart,) = res["set_apart"]["E2"]
    assert apart["dir"].name == "smoke" and (apart["n"], apart["k"]) == (4, 4)
    assert apart["differs"] == {"seed": (1, 0), "step_limit": (10, 220)}
    assert "> **WARNING:** E2: eval folder smoke (libero_spatial, memory predicted, checkpoint step 40" in md
    assert "step_limit 10 there, 220 in predicted" in md and "## Closed-loop success" in md
    assert (
        "| E2 | smoke | libero_spatial | predicted | 40 | 4/4 | seed: 1 vs 0; step_limit: 10 vs 220 | predicted |" in md
    )
    # As many episodes as the full evaluation: the longer step limit is reported.
    run = _smoke_beside_full(tmp_path / "tie", {k: False for k in E2_OUT})
    res = write_report([run], tmp_path / "out_tie")
    assert res["experiments"]["E2"]["k"] == sum(E2_OUT.values())
    assert [a["dir"].name for a in res["set_apart"]["E2"]] == ["smoke"]

    # A later checkpoint's evaluation is the headline even with fewer episodes; the earlier one is set apart.
    run = _smoke_beside_full(tmp_path / "later", {(0, 0): False}, smoke_step=50)
    res = write_report([run], tmp_path / "out_later")
    assert (res["experiments"]["E2"]["n"], res["experiments"]["E2"]["checkpoint_step"]) == (1, "50")
    assert res["set_apart"]["E2"][0]["dir"].name == "predicted"
    assert res["set_apart"]["E2"][0]["differs"]["checkpoint_step"] == (40, 50)

    # A field that joined the identity after the other evaluation ran keeps the two apart, named as such.
    run = _smoke_beside_full(tmp_path / "newer", {(0, 0): False})
    _settings(run / "eval" / "smoke", {**_identity("E2"), "config_sha256": "c0ffee"})
    res = write_report([run], tmp_path / "out_newer")
    (apart,) = res["set_apart"]["E2"]
    assert apart["dir"].name == "smoke" and list(apart["differs"]) == ["config_sha256"]
    md = (tmp_path / "out_newer" / "report.md").read_text()
    assert "config_sha256 'c0ffee' there, not recorded in predicted" in md


def test_every_success_row_names_the_evaluated_checkpoint_step(tmp_path):
    run = _make_run(tmp_path, "E2", True, E2_OUT)
    _settings(run / "eval" / "predicted", _identity("E2", step=40))
    res = write_report([run], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert res["experiments"]["E2"]["checkpoint_step"] == "40"
    k, n = sum(E2_OUT.values()), len(E2_OUT)
    assert f"| E2 | predicted | 40 | {n} | {k} |" in md  # closed-loop success
    assert "| suite | task | instruction | E2 (step 40) |" in md  # per task
    assert "| experiment | checkpoint step | predicted |" in md and f"| E2 | 40 | {k}/{n} = " in md  # memory ablation
    assert f"(n={n}, checkpoint step 40)" in md  # offline vs closed loop
    assert "| evaluated checkpoint step |" in md and "| yes | 40 |" in md  # the runs table, beside training logs


def test_an_evaluation_without_identity_is_not_merged_with_one_that_records_it(tmp_path):
    run = _smoke_beside_full(tmp_path, {(0, i): False for i in range(4)})
    (run / "eval" / "smoke" / "settings.json").unlink()
    res = write_report([run], tmp_path / "out")
    assert res["experiments"]["E2"]["n"] == len(E2_OUT)
    (apart,) = res["set_apart"]["E2"]
    assert apart["differs"] is None and apart["n"] == 4
    md = (tmp_path / "out" / "report.md").read_text()
    assert "it recorded no identity" in md and "identity not recorded" in md
    # Two shards of one evaluation in two folders (one identity) still merge.
    _settings(run / "eval" / "smoke", _identity("E2", step=40))
    _reseed(run / "eval" / "smoke", 0)
    res = write_report([run], tmp_path / "out2")
    assert res["set_apart"] == {} and res["experiments"]["E2"]["n"] == len(set(E2_OUT) | {(0, i) for i in range(4)})


@pytest.mark.parametrize("missing", ["settings", "identity"])
def test_older_evaluations_without_identity_merge_as_before(tmp_path, missing):
    run = _smoke_beside_full(tmp_path, {(0, i): True for i in range(4)})
    for d in ("predicted", "smoke"):
        path = run / "eval" / d / "settings.json"
        path.unlink() if missing == "settings" else path.write_text(json.dumps({"suite": SUITE}))
    res = write_report([run], tmp_path / "out")
    assert res["set_apart"] == {} and res["experiments"]["E2"]["n"] == len(E2_OUT) + 4
    assert res["experiments"]["E2"]["checkpoint_step"] == "not recorded"
