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
    return {"suite": SUITE, "task_id": t, "task": f"put bowl {t} on plate", "init_index": i, "seed": 0, "memory": memory,
            "success": ok, "steps": 80 if ok else 220, "failure": None if ok else "timeout", "seconds": 3.2, "experiment": exp}


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
    offline = {"action_mse": {"none": 0.41}, "gate": None} if not with_world else \
        {"action_mse": {"predicted": 0.38, "oracle": 0.35, "zero": 0.45}, "world_mse": 0.6, "world_mse_copy_last": 0.8,
         "world_skill": 0.25, "gate": 0.2}
    (run / "eval_offline_val.json").write_text(json.dumps(offline))
    if outcomes is None:
        return run
    mode = "predicted" if with_world else "none"
    eps = [_episode(t, i, ok, mode, preset) for (t, i), ok in outcomes.items()]
    # E2 names videos as the closed-loop evaluator does (a "video" field); E0 only by task/init in the file name.
    first = [next(k for k, v in outcomes.items() if v == want) for want in (True, False)]
    names = {}
    for k, (t, i) in enumerate(first):
        names[(t, i)] = f"task{t:02d}_init{i:02d}_{'ok' if outcomes[(t, i)] else 'fail'}.mp4" if with_world \
            else f"{SUITE}_task{t}_init{i}.mp4"
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
        _write_jsonl(run / "eval" / m / "episodes.jsonl", [_episode(t, i, ok, m, preset) for (t, i), ok in outs.items()])
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
    for name in ("training_curves.png", "success_overall.png", "success_memory.png", "strip_E2_success.png",
                 "strip_E2_failure.png", "strip_E0_success.png", "strip_E0_failure.png"):
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
    ci = paired_comparison({(SUITE, *k): E0_OUT[k] for k in E0_OUT}, {(SUITE, *k): E2_OUT[k] for k in E2_OUT})["diff_ci"]
    row = (f"| 12 | {sum(E0_OUT[k] for k in common)} ({100 * sum(E0_OUT[k] for k in common) / 12:.1f}%) "
           f"| {k2} ({100 * k2 / 12:.1f}%) | {100 * diff:+.1f} pp | [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] pp "
           f"| {b_only} | {a_only} | {p:.4g} |")
    assert row in md

    # Memory ablation (closed loop and offline), offline-vs-closed-loop caveat, no step-level p-values.
    assert "| E2 | – | " in md and f"{sum(E2_ZERO.values())}/12" in md
    assert "0.3800" in md and "0.4500" in md and "+0.250" in md
    assert "Offline loss does not rank policies" in md
    assert md.count("p =") == 0 and md.count("McNemar p") == 1
    assert "put bowl 1 on plate" in md
    assert "E2: first failure (task01_init00_fail.mp4)" in md and "E0: first failure (libero_spatial_task0_init1.mp4)" in md


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
    runs = {"A": [{"kind": "train", "epoch": 1, "action_loss": 1.0}, {"kind": "train", "epoch": 1, "action_loss": 0.9},
                  {"kind": "val", "epoch": 1, "action_loss": 5.0}]}
    _assert_png(plot_training_curves(runs, tmp_path / "c.png"))
    _assert_png(plot_success_bars({"A": {"rate": 0.5, "lo": 0.2, "hi": 0.8, "n": 10}}, tmp_path / "b.png", "t"))
    frames = [np.full((16, 24, 3), 40 * k, np.uint8) for k in range(3)]
    _assert_png(frame_strip(frames, tmp_path / "s.png", labels=["a", "b", "c"]))
    with pytest.raises(ValueError, match="2 labels for 3 frames"):
        frame_strip(frames, tmp_path / "s.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="lacks \\['hi'\\]"):
        plot_success_bars({"A": {"rate": 0.5, "lo": 0.2, "n": 10}}, tmp_path / "b.png", "t")


# A sweep: E0 and E2, training seeds 0 and 1, the same initial states per seed; E0 seed 1 has one extra initial state.
SWEEP = {("E0", 0): {(t, i): (t + i) % 3 == 0 for t in range(2) for i in range(5)},
         ("E0", 1): {(t, i): i != 4 for t in range(2) for i in range(5)} | {(1, 9): True},
         ("E2", 0): {(t, i): (t + 2 * i) % 4 != 1 for t in range(2) for i in range(5)},
         ("E2", 1): {(t, i): t == 0 for t in range(2) for i in range(5)}}


def _make_seed_run(root, preset, seed, outcomes, seed_in_config=True):
    run = root / "runs" / f"{preset}-seed{seed}"
    run.mkdir(parents=True)
    train = {"seed": seed} if seed_in_config else {}  # without it, the seed comes from the folder name
    (run / "config.json").write_text(json.dumps({"preset": preset, "policy": {}, "train": train}))
    _write_jsonl(run / "metrics.jsonl", [{"kind": "train", "epoch": ep, "action_loss": (1.0 + seed) / ep} for ep in (1, 2)])
    mode = "predicted" if preset == "E2" else "none"
    _write_jsonl(run / "eval" / mode / "episodes.jsonl", [_episode(t, i, ok, mode, preset) for (t, i), ok in outcomes.items()])
    return run


def test_report_seed_sweep(tmp_path):
    dirs = [_make_seed_run(tmp_path, p, s, out, seed_in_config=(p, s) != ("E2", 1)) for (p, s), out in SWEEP.items()]
    out = tmp_path / "report"
    res = write_report(dirs[::-1], out)  # folder order does not matter
    md = (out / "report.md").read_text()

    # Per-seed and pooled success, computed here from the outcomes.
    for p in ("E0", "E2"):
        k = sum(sum(SWEEP[(p, s)].values()) for s in (0, 1))
        n = sum(len(SWEEP[(p, s)]) for s in (0, 1))
        pooled = res["pooled"][p]
        assert (pooled["n"], pooled["k"]) == (n, k) and pooled["rate"] == pytest.approx(k / n)
        assert pooled["ci"] == pytest.approx(wilson_interval(k, n))
        rates = [sum(SWEEP[(p, s)].values()) / len(SWEEP[(p, s)]) for s in (0, 1)]
        assert set(pooled["per_seed"]) == {0, 1}
        for s, rate in zip((0, 1), rates):
            assert pooled["per_seed"][s] == {"n": len(SWEEP[(p, s)]), "k": sum(SWEEP[(p, s)].values()), "rate": pytest.approx(rate)}
        assert pooled["seed_mean"] == pytest.approx(np.mean(rates)) and pooled["seed_std"] == pytest.approx(np.std(rates, ddof=1))
        lo, hi = wilson_interval(k, n)
        assert f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]%" in md
    assert "## Per-seed and pooled results" in md and "| seed 0 | seed 1 |" in md

    # Pooled paired comparison: keys carry the training seed, so seed s of E0 meets seed s of E2 only.
    a = {(s, SUITE, t, i): ok for s in (0, 1) for (t, i), ok in SWEEP[("E0", s)].items()}
    b = {(s, SUITE, t, i): ok for s in (0, 1) for (t, i), ok in SWEEP[("E2", s)].items()}
    common = set(a) & set(b)
    b_only = sum(b[k] and not a[k] for k in common)
    a_only = sum(a[k] and not b[k] for k in common)
    pc = res["paired_pooled"]
    assert (pc["a"], pc["b"], pc["n_pairs"], pc["b_only"], pc["a_only"]) == ("E0", "E2", 20, b_only, a_only)
    assert pc["diff"] == pytest.approx((sum(b[k] for k in common) - sum(a[k] for k in common)) / 20)
    assert pc["mcnemar_p"] == pytest.approx(binomtest(b_only, b_only + a_only, 0.5).pvalue)
    assert pc["unpaired_keys"] == {"a": 1, "b": 0} and pc["diff_ci"] == paired_comparison(a, b)["diff_ci"]
    crossed = {(1 - k[0], *k[1:]): v for k, v in b.items()}  # E0 seed 0 against E2 seed 1: a different answer
    assert (paired_comparison(a, crossed)["b_only"], paired_comparison(a, crossed)["a_only"]) != (b_only, a_only)
    for s in (0, 1):
        sa, sb = SWEEP[("E0", s)], SWEEP[("E2", s)]
        ks = set(sa) & set(sb)
        d = (sum(sb[k] for k in ks) - sum(sa[k] for k in ks)) / len(ks)
        assert pc["per_seed"][s]["n_pairs"] == 10 and pc["per_seed"][s]["diff"] == pytest.approx(d)
        assert f"| {s} | 10 | {sum(sa[k] for k in ks)} ({100 * sum(sa[k] for k in ks) / 10:.1f}%) |" in md
    assert "Keys that could not be paired (left out): 1 of E0, 0 of E2." in md
    assert "## Paired comparison pooled over training seeds" in md and "McNemar p" in md
    assert res["paired"] is None and res["compare"] is None and res["compare_pooled"] == ("E0", "E2")

    # Files and figures.
    for name in ("success_pooled.png", "success_overall.png", "training_curves.png"):
        _assert_png(out / name)
    assert "](success_pooled.png)" in md and out / "success_pooled.png" in res["images"]
    assert "E0 (E0-seed0)" in res["experiments"]  # per-run names stay distinct

    # An explicit compare may name presets; the order sets the sign.
    res2 = write_report(dirs, tmp_path / "report2", compare=("E2", "E0"))
    assert res2["paired_pooled"]["a"] == "E2" and res2["paired_pooled"]["diff"] == pytest.approx(-pc["diff"])
