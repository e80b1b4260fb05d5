"""The experiments launcher end to end: every preset over 2 seeds, closed-loop evaluation, one report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
pytestmark = [pytest.mark.sim, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def test_launcher_runs_all_presets_over_two_seeds(fixture_dataset, tmp_path):
    from world_modality.data.lerobot import load_dataset

    ds = load_dataset(fixture_dataset)
    coc = tmp_path / "coc.jsonl"
    coc.write_text("".join(json.dumps({"episode_index": e.index, "frame_index": f, "text": "move the block"}) + "\n"
                           for e in ds.episodes for f in range(e.length)))
    env = dict(os.environ, DATASET=str(fixture_dataset), SEEDS="0 1", OUT=str(tmp_path / "sweep"), COC_JSONL=str(coc),
               TASKS="0", N_EPISODES="1", WORKERS="1", MAX_EPOCHS="1", PY=sys.executable,
               TRAIN_ARGS="--image_size 32 --world_image_size 32 --no-tensorboard", EVAL_ARGS="--max_steps 8")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_fplus_experiments.sh")], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.name != "report")
    assert runs == sorted(f"{e}-seed{s}" for e in ("E0", "E2", "E4", "E0-Flow", "E2-Flow") for s in (0, 1))
    for run in runs:
        episodes = list((tmp_path / "sweep" / run / "eval").glob("*/episodes.jsonl"))
        assert len(episodes) == 1 and len(episodes[0].read_text().splitlines()) == 1
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "pooled" in report.lower() and "E4" in report


def test_launcher_refuses_a_dataset_without_the_instruction_key(fixture_dataset, tmp_path):
    env = dict(os.environ, DATASET=str(fixture_dataset), INSTRUCTION_KEY="instruction", OUT=str(tmp_path / "x"), PY=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_fplus_experiments.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "ERROR" in proc.stderr and "task" in proc.stderr
    assert not (tmp_path / "x").exists()
