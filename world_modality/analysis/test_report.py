"""Tests of the run report on fake run folders: files, figures, merged shards, duplicates, paired numbers."""

import json

import av
import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest

from world_modality.analysis.plots import frame_strip, plot_success_bars, plot_training_curves
from world_modality.analysis.report import write_report
from world_modality.analysis.stats import paired_comparison, wilson_interval

SUITE = "libero_spatial"
# (task_id, init_index) -> outcome; E0 has one initial state E2 lacks (unpaired).
E0_OUT = {(t, i): (t + i) % 3 == 0 for t in range(2) for i in range(6)} | {(1, 6): True}
E2_OUT = {(t, i): (t + 2 * i) % 4 != 1 for t in range(2) for i in range(6)}
E2_ZERO = {(t, i): i % 2 == 0 for t in range(2) for i in range(6)}


def _episode(t, i, ok, memory, exp):
    return {
        "suite": SUITE,
        "task_id": t,
        "task": f"put bowl {t} on plate",
        "init_index": i,
        "seed": 0,
        "memory": memory,
        "success": ok,
        "steps": 80 if ok else 220,
        "failure": None if ok else "timeout",
        "seconds": 3.2,
        "experiment": exp,
    }


def _write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _write_mp4(path, n_frames=12, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for k in range(n_frames):
            img = np.zeros((32, 32, 3), np.uint8)
            img[:, : 2 + 2 * k] = rng.integers(0, 255, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _make_run(root, preset, with_world, outcomes=None, extra_modes=None):
    run = root / f"run_{preset.lower()}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": preset, "data": {}, "world": {}, "policy": {}, "train": {}}))
    metrics = []
    for ep in range(1, 5):
        m = {"kind": "train", "epoch": ep, "step": 10 * ep, "action_loss": 1.0 / ep}
        if with_world:
            m.update({"world_loss": 0.8 / ep, "gate": 0.05 * ep, "gate_tanh": float(np.tanh(0.05 * ep))})
        metrics.append(m)
    _write_jsonl(run / "metrics.jsonl", metrics)
    offline = (
        {"action_mse": {"none": 0.41}, "gate": None}
        if not with_world
        else {
            "action_mse": {"predicted": 0.38, "oracle": 0.35, "zero": 0.45},
            "world_mse": 0.6,
            "world_mse_copy_last": 0.8,
            "world_skill": 0.25,
            "gate": 0.2,
        }
    )
    (run / "eval_offline_val.json").write_text(json.dumps(offline))
    if outcomes is None:
        return run
    mode = "predicted" if with_world else "none"
    eps = [_episode(t, i, ok, mode, preset) for (t, i), ok in outcomes.items()]
    # E2 names videos as the closed-loop evaluator does (a "video" field); E0 only by task/init in the file name.
    first = [next(k for k, v in outcomes.items() if v == want) for want in (True, False)]
    names = {}
    for k, (t, i) in enumerate(first):
        names[(t, i)] = (
            f"task{t:02d}_init{i:02d}_{'ok' if outcomes[(t, i)] else 'fail'}.mp4"
            if with_world
            else f"{SUITE}_task{t}_init{i}.mp4"
        )
        _write_mp4(run / "eval" / mode / "videos" / names[(t, i)], seed=k)
    for e in eps:
        if with_world and (e["task_id"], e["init_index"]) in names:
            e["video"] = f"videos/{names[(e['task_id'], e['init_index'])]}"
    if with_world:  # an evaluation split in two shards
        _write_jsonl(run / "eval" / mode / "episodes.shard-0-of-2.jsonl", eps[::2])
        _write_jsonl(run / "eval" / mode / "episodes.shard-1-of-2.jsonl", eps[1::2])
    else:  # a resumed evaluation that wrote one episode twice
        _write_jsonl(run / "eval" / mode / "episodes.jsonl", eps + [eps[3]])
    for m, outs in (extra_modes or {}).items():
        _write_jsonl(
            run / "eval" / m / "episodes.jsonl", [_episode(t, i, ok, m, preset) for (t, i), ok in outs.items()]
        )
    return run


def _assert_png(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.load()
        assert im.size[0] > 100 and im.size[1] > 50


def test_report_end_to_end(tmp_path):
    e0 = _make_run(tmp_path, "E0", False, E0_OUT)
    e2 = _make_run(tmp_path, "E2", True, E2_OUT, extra_modes={"zero": E2_ZERO})
    out = tmp_path / "report"
    res = write_report([e0, e2], out)

    md = (out / "report.md").read_text()
    htm = (out / "report.html").read_text()
    assert res["report_md"] == out / "report.md" and res["report_html"] == out / "report.html"
    assert res["compare"] == ("E0", "E2")
    for name in (
        "training_curves.png",
        "success_overall.png",
        "success_memory.png",
        "strip_E2_success.png",
        "strip_E2_failure.png",
        "strip_E0_success.png",
        "strip_E0_failure.png",
    ):
        _assert_png(out / name)
        assert f"]({name})" in md and f"src='{name}'" in htm
    assert set(res["images"]) >= {out / "training_curves.png", out / "success_overall.png"}
    assert "<style>" in htm and "http" not in htm  # self-contained

    # Duplicates are counted once and reported; shards are merged.
    assert res["duplicates"] == {"E0": 1, "E2": 0}
    assert "E0: 1 episode file(s) merged; 1 duplicate episode line(s) counted once" in md
    assert "E2: 3 episode file(s) merged; 0 duplicate" in md
    k0, k2 = sum(E0_OUT.values()), sum(E2_OUT.values())
    assert res["experiments"]["E0"]["n"] == 13 and res["experiments"]["E0"]["k"] == k0
    assert res["experiments"]["E2"]["n"] == 12 and res["experiments"]["E2"]["k"] == k2
    assert res["experiments"]["E2"]["memory"] == "predicted"

    # Paired numbers, computed here from the outcomes themselves.
    common = sorted(set(E0_OUT) & set(E2_OUT))
    b_only = sum(E2_OUT[k] and not E0_OUT[k] for k in common)
    a_only = sum(E0_OUT[k] and not E2_OUT[k] for k in common)
    diff = (sum(E2_OUT[k] for k in common) - sum(E0_OUT[k] for k in common)) / len(common)
    p = binomtest(b_only, b_only + a_only, 0.5).pvalue
    pc = res["paired"]
    assert (pc["n_pairs"], pc["b_only"], pc["a_only"]) == (12, b_only, a_only)
    assert pc["diff"] == pytest.approx(diff) and pc["mcnemar_p"] == pytest.approx(p)
    assert pc["unpaired_keys"] == {"a": 1, "b": 0}
    ci = paired_comparison({(SUITE, *k): E0_OUT[k] for k in E0_OUT}, {(SUITE, *k): E2_OUT[k] for k in E2_OUT})[
        "diff_ci"
    ]
    row = (
        f"| 12 | {sum(E0_OUT[k] for k in common)} ({100 * sum(E0_OUT[k] for k in common) / 12:.1f}%) "
        f"| {k2} ({100 * k2 / 12:.1f}%) | {100 * diff:+.1f} pp | [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] pp "
        f"| paired percentile bootstrap over pairs (10000 draws, seed 0) | {b_only} | {a_only} | {p:.4g} "
        "| exact McNemar |"
    )
    assert row in md
    assert pc["test"] == "exact McNemar" and pc["p"] == pc["mcnemar_p"] and pc["error_pairs"] == 0
    assert "WARNING: only 12 pairs. A bootstrap interval over so few is unreliable" in md  # 12 < FEW_PAIRS

    # Memory ablation (closed loop and offline), offline-vs-closed-loop caveat, no step-level p-values.
    assert "| E2 | – | " in md and f"{sum(E2_ZERO.values())}/12" in md
    assert "0.3800" in md and "0.4500" in md and "+0.250" in md
    assert "Offline loss does not rank policies" in md
    assert md.count("p =") == 0 and md.count("| exact McNemar |") == 1
    assert "put bowl 1 on plate" in md
    assert "E2: first failure (task01_init00_fail.mp4)" in md
    assert "E0: first failure (libero_spatial_task0_init1.mp4)" in md


def test_report_without_eval(tmp_path):
    e2 = _make_run(tmp_path, "E2", True)
    (tmp_path / "bare").mkdir()  # no config, no metrics: named after its folder
    res = write_report([e2, tmp_path / "bare"], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    _assert_png(tmp_path / "out" / "training_curves.png")
    assert res["paired"] is None and res["experiments"] == {} and res["compare"] is None
    assert "No closed-loop results." in md and "no closed-loop results" in md
    assert "E2: no closed-loop results." in md and "bare: no closed-loop results." in md
    assert "0.3800 (predicted)" in md and not (tmp_path / "out" / "success_overall.png").exists()


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        write_report([tmp_path / "missing"], tmp_path / "out")
    e2 = _make_run(tmp_path, "E2", True, E2_OUT)
    with pytest.raises(ValueError, match="'E9'.*expected one of \\['E2'\\]"):
        write_report([e2], tmp_path / "out", compare=("E2", "E9"))


def test_plots_directly(tmp_path):
    runs = {
        "A": [
            {"kind": "train", "epoch": 1, "action_loss": 1.0},
            {"kind": "train", "epoch": 1, "action_loss": 0.9},
            {"kind": "val", "epoch": 1, "action_loss": 5.0},
        ]
    }
    _assert_png(plot_training_curves(runs, tmp_path / "c.png"))
    _assert_png(plot_success_bars({"A": {"rate": 0.5, "lo": 0.2, "hi": 0.8, "n": 10}}, tmp_path / "b.png", "t"))
    frames = [np.full((16, 24, 3), 40 * k, np.uint8) for k in range(3)]
    _assert_png(frame_strip(frames, tmp_path / "s.png", labels=["a", "b", "c"]))
    with pytest.raises(ValueError, match="2 labels for 3 frames"):
        frame_strip(frames, tmp_path / "s.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="lacks \\['hi'\\]"):
        plot_success_bars({"A": {"rate": 0.5, "lo": 0.2, "n": 10}}, tmp_path / "b.png", "t")


# A sweep: E0 and E2, training seeds 0 and 1, the same initial states per seed; E0 seed 1 has one extra initial state.


def _err(t, i, memory, exp, msg="RuntimeError: MuJoCo step diverged"):
    return {
        "suite": SUITE,
        "task_id": t,
        "task": f"put bowl {t} on plate",
        "init_index": i,
        "seed": 0,
        "memory": memory,
        "success": None,
        "outcome": "error",
        "error": msg,
        "steps": 3,
        "failure": None,
        "seconds": 0.1,
        "experiment": exp,
    }


def _new(rec):
    return {**rec, "outcome": "success" if rec["success"] else "failure"}


def test_report_counts_errors_apart_and_retried_errors_once(tmp_path):
    # E0, old-format file: one exception written as a failure ("exception: ..."), no outcome field.
    e0 = _make_run(tmp_path, "E0", False)
    old = [_episode(t, i, ok, "none", "E0") for (t, i), ok in E2_ZERO.items()]
    old[1] = {**old[1], "success": False, "failure": "exception: ValueError: bad frame"}
    _write_jsonl(e0 / "eval" / "none" / "episodes.jsonl", old)
    # E2, new format: (0, 2) errored then a rerun finished it; (1, 3) errored twice, never finished;
    # (1, 5) errored on a start E0 finished; a torn last line.
    e2 = _make_run(tmp_path, "E2", True)
    outs = dict(E2_OUT)
    recs = [
        _new(_episode(t, i, ok, "predicted", "E2")) for (t, i), ok in outs.items() if (t, i) not in {(1, 3), (1, 5)}
    ]
    first = [_err(0, 2, "predicted", "E2"), _err(1, 3, "predicted", "E2"), _err(1, 5, "predicted", "E2")]
    rerun = [_err(1, 3, "predicted", "E2", "MemoryError: out of memory")]
    path = e2 / "eval" / "predicted" / "episodes.jsonl"
    _write_jsonl(path, first + recs + rerun)
    path.write_text(path.read_text() + '{"suite": "libero_sp')
    res = write_report([e0, e2], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()

    finished = {k: v for k, v in outs.items() if k not in {(1, 3), (1, 5)}}
    k2 = sum(finished.values())
    assert res["experiments"]["E2"] == {
        "memory": "predicted",
        "n": 10,
        "k": k2,
        "rate": pytest.approx(k2 / 10),
        "ci": pytest.approx(wilson_interval(k2, 10)),
        "errors": 2,
        "checkpoint_step": "not recorded",
    }
    k0 = sum(v for j, v in enumerate(E2_ZERO.values()) if j != 1)
    assert res["experiments"]["E0"]["n"] == 12 and res["experiments"]["E0"]["k"] == k0
    assert res["experiments"]["E0"]["errors"] == 0  # an old file's exception stays a failure

    # Success table: errors apart, old-format exceptions labelled as failures.
    lo, hi = wilson_interval(k2, 10)
    assert (
        f"| E2 | predicted | not recorded | 10 | {k2} | {100 * k2 / 10:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}]% "
        f"| {10 - k2} | 2 | 0 |"
    ) in md
    assert "| E0 | none | not recorded | 12 |" in md and f"| {12 - k0 - 1} | 0 | 1 |" in md
    assert "| errors (excluded) | old-format exceptions (counted as failures) |" in md
    assert "E2: 1 episode file(s) merged; 0 duplicate episode line(s)" in md
    assert "2 episode(s) ended in an error and never finished (left out of rates); 1 errored attempt(s) retried" in md
    assert "1 unreadable line(s) skipped" in md
    # Per task: task 1 of E2 has 4 finished and 2 errors.
    k_t1 = sum(v for (t, i), v in finished.items() if t == 1)
    lo, hi = wilson_interval(k_t1, 4)
    assert f"{k_t1}/4 = {100 * k_t1 / 4:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]% (+2 errors)" in md

    # Paired: (1, 3) and (1, 5) have an error on E2's side: left out, counted as such.
    pc = res["paired"]
    common = sorted(finished)
    e0_out = {k: v for k, v in zip(E2_ZERO, [r["success"] for r in old])}
    assert (pc["n_pairs"], pc["error_pairs"], pc["unpaired_keys"]) == (10, 2, {"a": 0, "b": 0})
    assert pc["b_only"] == sum(finished[k] and not e0_out[k] for k in common)
    assert "pairs left out because an episode ended in an error on either side: 2" in md


def test_e2_present_headline_is_present_and_it_pairs_against_e0(tmp_path):
    """An E2-Present run is deployed with `present` memory (its config's mode): that is its headline, the paired
    comparison puts it against E0, and the ablation tables show predicted and present first, in MEMORY_MODES order."""
    e0 = _make_run(tmp_path, "E0", False, E0_OUT)
    run = _make_run(tmp_path, "E2-Present", True)
    cfg = json.loads((run / "config.json").read_text())
    cfg["policy"]["memory_mode"] = "present"
    (run / "config.json").write_text(json.dumps(cfg))
    offline = {
        "action_mse": {
            m: 0.3 + 0.01 * k for k, m in enumerate(["shuffle", "zero", "present", "predicted", "random", "oracle"])
        },
        "gate": 0.1,
    }
    (run / "eval_offline_val.json").write_text(json.dumps(offline))
    for mode, outs in (("present", E2_OUT), ("predicted", E2_ZERO), ("zero", E2_ZERO)):
        _write_jsonl(
            run / "eval" / f"{SUITE}-{mode}" / "episodes.jsonl",
            [_episode(t, i, ok, mode, "E2-Present") for (t, i), ok in outs.items()],
        )
    for order in ([e0, run], [run, e0]):
        out = tmp_path / f"report-{order[0].name}"
        res = write_report(order, out)
        assert res["experiments"]["E2-Present"]["memory"] == "present"
        assert res["experiments"]["E2-Present"]["k"] == sum(E2_OUT.values())
        assert res["compare"] == ("E0", "E2-Present") and res["paired"]["a"] == "E0"
        assert res["paired"]["success_b"] == sum(E2_OUT[k] for k in E2_OUT if k in E0_OUT)
        md = (out / "report.md").read_text()
        # Columns: E0's "none", then MEMORY_MODES order; closed loop, then offline.
        assert "| experiment | checkpoint step | none | predicted | present | zero |" in md
        assert "| experiment | none | predicted | present | oracle | zero | random | shuffle |" in md
        assert "E2-Present (memory present, checkpoint step not recorded) against E0 (memory none," in md
