"""bench/world_probe.py on the synthetic fixture (with its environment state): random, pretrained and env_state arms,
one JSON line last, figures measured (none derived); the results file is the script's own (the committed one's
keys, its commit and command, how the dataset and the encoder were made), and the env_state row says it is an
upper bound wherever it is printed or written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from world_modality.data.fixture import make_fixture_dataset
from world_modality.world.pretrain import PretrainSettings, pretrain

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_world_probe_bench_on_the_fixture(tmp_path):
    data = make_fixture_dataset(
        tmp_path / "fixture", n_episodes=12, length=24, image_size=32, n_tasks=2, seed=0, with_environment_state=True
    )
    enc = tmp_path / "enc"
    pretrain(
        PretrainSettings(dataset=str(data), image_size=32, world_image_size=32, steps=4, batch_size=4, num_threads=1),
        enc,
        progress=False,
        log=lambda _: None,
    )
    out = tmp_path / "world_probe.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "world_probe.py"),
            str(data),
            "--pretrained",
            str(enc),
            "--image_size",
            "32",
            "--world_image_size",
            "32",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == "world_probe"
    for arm in ("random", "pretrained", "env_state"):
        assert last[f"r2_overall_{arm}"] is not None
    assert last["r2_overall_env_state"] > 0.99  # the state holds the positions
    assert not [k for k in last if "derived" in k]
    saved = json.loads(out.read_text())
    assert set(saved["encoders"]) == {"random", "pretrained", "env_state"}
    assert "ordering (measured)" in proc.stdout
    # The committed results file is this script's output: its keys, and those of each encoder, are written.
    committed = json.loads((ROOT / "bench" / "results" / "world_probe.json").read_text())
    assert set(committed) <= set(saved), set(committed) - set(saved)
    for arm, fields in committed["encoders"].items():
        assert set(fields) <= set(saved["encoders"][arm]), arm
    assert saved["commit"] == last["commit"] and saved["commit"] not in ("", "unknown")
    assert "bench/world_probe.py" in saved["command"] and str(data) in saved["command"]
    info = json.loads((data / "meta" / "info.json").read_text())
    assert saved["generation"]["provenance"] == info["provenance"] and saved["generation"]["episodes"] == 12
    assert saved["pretrain"]["steps"] == 4 and saved["pretrain"]["loss_last"] > 0
    bound = "upper bound: the input contains the targets"
    rows = [line for line in proc.stdout.splitlines() if line.startswith("env_state")]
    assert rows and all(bound in line for line in rows), proc.stdout
    assert bound in saved["encoders"]["env_state"]["label"] and saved["upper_bounds"] == {"r2_overall_env_state": bound}
    assert not [a for a in ("random", "pretrained") if bound in saved["encoders"][a]["label"]]


def test_world_probe_bench_without_environment_state_is_one_line(tmp_path):
    data = make_fixture_dataset(tmp_path / "plain", n_episodes=4, length=8, image_size=32, seed=0)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "world_probe.py"), str(data), "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "observation.environment_state" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.json").exists()
