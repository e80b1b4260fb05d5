"""The study report's named contrasts and their Holm adjustment, the view on states 10-49 alone, and the few rollout
videos kept beside the numbers (chosen, kept out of the .gitignore, listed), all from synthetic records."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from world_modality.study.test_study import _settings
from world_modality.study.test_tables import _run


def _records(experiment: str, seed: int, wins_of, states=range(50), tasks=(0,), suite="libero_spatial") -> dict:
    eps = [
        {"suite": suite, "task_id": t, "init_index": k, "success": bool(wins_of(t, k))} for t in tasks for k in states
    ]
    return {"train_suite": "libero_spatial", "experiment": experiment, "seed": seed, "suite": suite, "episodes": eps}


def _holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment, written out: the i-th smallest p times (m - i), made monotone, at most 1."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def test_the_named_contrasts_whose_arms_ran_and_the_fallback_for_other_arm_sets():
    from world_modality.study.contrasts import pairs_of

    def pairs(*experiments, encoders=None):
        return [(b, a, role) for a, b, role, _ in pairs_of(experiments, encoders)]

    assert pairs("E0", "E2", "E2-Present", "E2-State") == [
        ("E2", "E0", "primary"),
        ("E2", "E2-Present", "secondary"),
        ("E2-Present", "E0", "secondary"),
        ("E2-State", "E0", "secondary"),
    ]
    assert pairs("E2-State", "E0", "E2") == [("E2", "E0", "primary"), ("E2-State", "E0", "secondary")]
    # E2-Pretrained plays E2 when E2 is not run; with E2 (random) beside it, it is compared with E2.
    assert pairs("E0", "E2-Pretrained", "E2-Present")[:2] == [
        ("E2-Pretrained", "E0", "primary"),
        ("E2-Pretrained", "E2-Present", "secondary"),
    ]
    assert ("E2-Pretrained", "E2", "secondary") in pairs("E0", "E2", "E2-Pretrained")
    # Foresight is not measured across two encoders: it would mix foresight with the encoder's weights.
    kinds = {"E0": "none", "E2-Pretrained": "pretrained", "E2-Present": "random"}
    assert pairs("E0", "E2-Pretrained", "E2-Present", encoders=kinds) == [
        ("E2-Pretrained", "E0", "primary"),
        ("E2-Present", "E0", "secondary"),
    ]
    # Arms no named contrast covers are compared with E0; without any named contrast, second − first as before.
    assert pairs("E0", "E2", "E4", "E2-Flow") == [
        ("E2", "E0", "primary"),
        ("E4", "E0", "secondary"),
        ("E2-Flow", "E0", "secondary"),
    ]
    assert pairs("E0-Flow", "E2-Flow", "E4") == [("E2-Flow", "E0-Flow", "primary"), ("E4", "E0-Flow", "secondary")]
    assert pairs("E2-State", "E0") == [("E2-State", "E0", "primary")]  # the only named one is the primary
    assert pairs("E2") == []


def test_secondary_contrasts_are_holm_adjusted_as_one_family_and_the_primary_never(tmp_path):
    from world_modality.study.tables import render, results

    arms = ("--experiments", "E0,E2,E2-Present,E2-State", "--episodes-per-task", "20")
    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0,1", *arms)
    wins = {  # distinct effects, so the three secondary p-values differ and Holm's order matters
        "E0": lambda t, k: k % 5 == 0,
        "E2": lambda t, k: k % 5 != 4,
        "E2-Present": lambda t, k: k % 5 in (0, 1, 2),
        "E2-State": lambda t, k: True,
    }
    evals = [_records(e, seed, w, states=range(20)) for e, w in wins.items() for seed in (0, 1)]
    res = results(s, _run(evals))
    cs = res["contrasts"]
    assert [c["question"] for c in cs] == [
        "does the world modality help",
        "foresight, given the same history and encoder",
        "history, without foresight",
        "the upper bound: privileged object state (positive control)",
    ]
    assert "p_holm" not in cs[0]["average"] and cs[0]["average"]["diff"] == pytest.approx(0.6)
    raw = [c["average"]["p"] for c in cs[1:]]
    assert len(set(raw)) == 3
    assert [c["average"]["p_holm"] for c in cs[1:]] == pytest.approx(_holm(raw))
    assert all(c["average"]["p_holm"] >= c["average"]["p"] for c in cs[1:])
    text = render(s, res)
    assert "| E2-State − E0 | the upper bound: privileged object state (positive control) | secondary | +" in text


def test_a_study_of_states_0_to_49_also_reports_states_10_to_49_alone(tmp_path):
    from world_modality.study.held_out import held_out_view
    from world_modality.study.tables import render, results

    s = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0", "--pro", "swap")
    # E2 wins on the tuning states 0-9 only: it looks better over all 50 states, and is E0's equal on 10-49.
    evals = [
        _records("E0", 0, lambda t, k: k % 2 == 0, tasks=(0, 1)),
        _records("E2", 0, lambda t, k: k < 10 or k % 2 == 0, tasks=(0, 1)),
        _records("E0", 0, lambda t, k: False, states=range(3), suite="libero_spatial_swap"),
        _records("E2", 0, lambda t, k: True, states=range(3), suite="libero_spatial_swap"),
    ]
    evals[1]["errors"] = [{"suite": "libero_spatial", "task_id": 1, "init_index": 3, "outcome": "error"}]
    res = results(s, _run(evals))
    assert res["contrasts"][0]["average"]["diff"] == pytest.approx(10 / 100)
    view = res["held_out"]
    assert view["states"] == "10-49"
    e2 = view["standard"]["E2"]["libero_spatial"]
    assert (e2["n"], e2["k"], e2["starts"], e2["errors"]) == (80, 40, 80, 0)  # the error was on state 3: left out
    assert res["standard"]["E2"]["libero_spatial"]["n"] == 100
    held = view["contrasts"][0]["average"]
    assert held["diff"] == 0 and held["n_pairs"] == 80  # LIBERO-PRO's episodes are not in the view
    text = render(s, res)
    section = text.split("## Stored states 10-49 alone")[1]
    assert "the recipe was chosen on states 0-9" in section
    rows = [ln for ln in section.splitlines() if ln.startswith("| E2 ")]
    assert rows[0].split(" | ")[1].startswith("40/80 = 50.0% [")
    assert any(
        ln.startswith("| E2 − E0 | does the world modality help | primary | +0.0 pts") for ln in section.splitlines()
    )

    # The view needs all of 10-49 and some state below 10 run; otherwise it would repeat the table or invent states.
    assert held_out_view(_settings(tmp_path, "--init-states", "0-49")) is not None
    assert held_out_view(_settings(tmp_path, "--init-states", "5,10-49")) is not None
    for extra in (["--init-states", "10-49"], ["--episodes-per-task", "20"], ["--init-states", "0-9,11-49"]):
        assert held_out_view(_settings(tmp_path, *extra)) is None
    small = _settings(tmp_path, "--suites", "libero_spatial", "--seeds", "0", "--episodes-per-task", "20")
    assert "held_out" not in results(small, _run(evals)) and "## Stored states" not in render(
        small, results(small, _run(evals))
    )


def test_each_arm_keeps_its_first_tasks_first_two_videos_out_of_the_gitignore_and_the_report_lists_them(tmp_path):
    from world_modality.study.shards import write_ignore
    from world_modality.study.tables import render, results
    from world_modality.study.videos import kept_videos, videos_to_film

    base = ("--suites", "libero_spatial,libero_goal", "--seeds", "0,1", "--tasks", "3,4", "--pro", "swap")
    s = _settings(tmp_path / "s", *base)
    assert videos_to_film(s, 0, "libero_spatial") == 2  # films states 0 and 1 of each task
    assert videos_to_film(s, 1, "libero_spatial") == 0 and videos_to_film(s, 0, "libero_spatial_swap") == 0
    held = _settings(tmp_path / "s", *base, "--init-states", "10-49")
    assert videos_to_film(held, 0, "libero_goal") == 12  # states below 12 that run: 10 and 11

    eps = [
        {"task_id": t, "init_index": k, "success": k == 0, "video": f"videos/task{t:02d}_init{k:02d}_x.mp4"}
        for t in (3, 4)
        for k in (0, 1)
    ]
    eps.append({"task_id": 3, "init_index": 2, "success": True})  # not filmed
    kept = kept_videos(s, "libero_spatial", "E2", 0, "libero_spatial", [3, 4], eps)
    assert [(v["task_id"], v["init_index"], v["success"]) for v in kept] == [(3, 0, True), (3, 1, False)]
    assert kept[0]["path"] == "runs/libero_spatial/e2-seed0/eval/libero_spatial/videos/task03_init00_x.mp4"
    assert kept_videos(s, "libero_spatial", "E2", 1, "libero_spatial", [3, 4], eps) == []

    # git itself says which files a results repository would keep.
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = Path(s.out)
    out.mkdir(parents=True)
    write_ignore(s, [("libero_spatial", "E2", 0), ("libero_spatial", "E2", 1)])
    files = [
        "runs/libero_spatial/e2-seed0/eval/libero_spatial/videos/task03_init00_ok.mp4",
        "runs/libero_spatial/e2-seed0/eval/libero_spatial/videos/task03_init01_fail.mp4",
        "runs/libero_spatial/e2-seed0/eval/libero_spatial/videos/task04_init00_ok.mp4",
        "runs/libero_spatial/e2-seed1/eval/libero_spatial/videos/task03_init00_ok.mp4",
        "runs/libero_spatial/e2-seed0/checkpoints/step-1/model.safetensors",
        "runs/libero_spatial/e2-seed0/eval/libero_spatial/episodes.jsonl",
    ]
    for f in files:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        (out / f).write_text("x")
    subprocess.run(["git", "init", "-q", str(out)], check=True)
    check = subprocess.run(["git", "-C", str(out), "check-ignore", *files], capture_output=True, text=True)
    assert set(check.stdout.split()) == {files[2], files[3], files[4]}
    # A folder whose .gitignore a person wrote keeps it.
    (out / ".gitignore").write_text("mine\n")
    write_ignore(s, [("libero_spatial", "E2", 0)])
    assert (out / ".gitignore").read_text() == "mine\n"

    evals = [_records("E2", 0, lambda t, k: True, states=range(2), tasks=(3, 4)) | {"videos": kept}]
    evals.append(_records("E0", 0, lambda t, k: False, states=range(2), tasks=(3, 4)))
    res = results(s, _run(evals))
    assert [(v["experiment"], v["init_index"]) for v in res["videos"]] == [("E2", 0), ("E2", 1)]
    text = render(s, res).split("## Rollout videos")[1]
    assert (
        "- E2: [libero_spatial task 3, state 0, seed 0: success](runs/libero_spatial/e2-seed0/eval/libero_spatial/"
        "videos/task03_init00_x.mp4); [libero_spatial task 3, state 1, seed 0: failure](" in text
    )


def test_a_merged_report_links_each_shards_videos_from_its_own_folder(tmp_path):
    from world_modality.study.merge import _relocated

    record = {"experiment": "E2", "videos": [{"path": "runs/a/e2-seed0/eval/a/videos/v.mp4"}]}
    moved = _relocated(record, tmp_path / "shards" / "s1", str(tmp_path / "merged"))
    assert moved["videos"][0]["path"] == "../shards/s1/runs/a/e2-seed0/eval/a/videos/v.mp4"
    assert record["videos"][0]["path"] == "runs/a/e2-seed0/eval/a/videos/v.mp4"  # the shard's own record is kept
