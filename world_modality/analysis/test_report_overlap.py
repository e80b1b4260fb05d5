"""Tests of the report's train/evaluation overlap check: each eval folder's record and the warning on episodes
that overlap the training data."""

import json

from world_modality.analysis.report import write_report
from world_modality.analysis.test_report import E0_OUT, E2_OUT, E2_ZERO, SUITE, _make_run, _write_jsonl


def test_report_shows_the_overlap_check_and_flags_train_overlap(tmp_path):
    e0 = _make_run(tmp_path, "E0", False, E0_OUT)
    e2 = _make_run(tmp_path, "E2", True, E2_OUT, extra_modes={"zero": E2_ZERO, "shuffled": E2_ZERO})
    # E2 predicted: checked, start (0, 3) overlaps a training start and was allowed; its episode is flagged.
    (e2 / "eval" / "predicted" / "settings.json").write_text(
        json.dumps(
            {
                "suite": SUITE,
                "overlap": {
                    "checked": True,
                    "dataset": "runs/demo/data",
                    "how": "recorded start states",
                    "training_starts": 40,
                    "tolerance": 1e-3,
                    "min_distance": 0.0,
                    "overlapping": [[0, 3]],
                    "allowed": True,
                },
            }
        )
    )
    for shard in e2.glob("eval/predicted/episodes.shard-*.jsonl"):
        recs = [json.loads(x) for x in shard.read_text().splitlines()]
        _write_jsonl(
            shard, [{**r, "train_overlap": True} if (r["task_id"], r["init_index"]) == (0, 3) else r for r in recs]
        )
    # E2 zero: checked, nothing overlaps; E2 shuffled: a dataset without starts. E0: an old settings.json.
    (e2 / "eval" / "zero" / "settings.json").write_text(
        json.dumps(
            {
                "overlap": {
                    "checked": True,
                    "dataset": "runs/demo/data",
                    "training_starts": 40,
                    "tolerance": 1e-3,
                    "min_distance": 0.0421,
                    "overlapping": [],
                    "allowed": False,
                }
            }
        )
    )
    (e2 / "eval" / "shuffled" / "settings.json").write_text(
        json.dumps(
            {
                "overlap": {
                    "checked": False,
                    "dataset": "fixture",
                    "how": "the training dataset records no start states",
                    "training_starts": 0,
                    "tolerance": 1e-3,
                    "min_distance": None,
                    "overlapping": [],
                    "allowed": False,
                }
            }
        )
    )
    (e0 / "eval" / "none" / "settings.json").write_text(json.dumps({"suite": SUITE, "seed": 7}))
    res = write_report([e0, e2], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    htm = (tmp_path / "out" / "report.html").read_text()

    assert "## Train/evaluation overlap check" in md
    assert (
        "| E2 | predicted | yes (recorded start states) | runs/demo/data | 40 | 0 (tolerance 0.001) "
        "| task 0 init 3 | yes | 1 |"
    ) in md
    assert (
        "| E2 | shuffled | not checked (the training dataset records no start states) | fixture | 0 "
        "| – (tolerance 0.001) | none | no | 0 |"
    ) in md
    assert "| E2 | zero | yes | runs/demo/data | 40 | 0.0421 (tolerance 0.001) | none | no | 0 |" in md
    assert (
        "| E0 | none | not checked (settings.json has no overlap record: evaluated before the check existed) "
        "| – | – | – | – | – | 0 |"
    ) in md
    warning = (
        "> **WARNING:** E2: 1 episode(s) were evaluated on initial states that overlap its training data "
        f"(train_overlap): {SUITE} task 0 init 3 (memory predicted)."
    )
    assert md.count(warning) == 2  # at the top of the report and in the overlap section
    assert md.index(warning) < md.index("## Runs")
    assert "<p class='warn'>WARNING: E2: 1 episode(s)" in htm and ".warn{" in htm
    assert res["overlap"]["E2"][0]["train_overlap"] == [(SUITE, 0, 3, "predicted")]
    assert res["overlap"]["E0"][0]["overlap"] is None

    # No settings.json at all: not checked, and no warning.
    (e0 / "eval" / "none" / "settings.json").unlink()
    md = (write_report([e0], tmp_path / "out2")["report_md"]).read_text()
    assert "| E0 | none | not checked (no settings.json) |" in md and "WARNING" not in md
