"""The same seed gives the same run: two trainings of one config, one in this process and one in a
fresh process (another hash seed, nothing shared), give bit-identical weights, identical per-epoch
metrics and identical offline evaluation JSON."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from world_modality.cli import main as cli_main
from world_modality.policy.checkpoint_store import resolve_checkpoint

pytestmark = pytest.mark.slow


def without(records, *keys):
    return [{k: v for k, v in r.items() if k not in keys} for r in records]


def test_same_seed_same_weights_metrics_and_offline_results(fixture_dataset, trained_e2, tmp_path):
    run_a = trained_e2.parent.parent
    run_b = tmp_path / "again"
    # The flags spell out conftest's tiny_config for trained_e2 (E2, 32 px, 4 epochs, batch 8).
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "world_modality.cli",
            "train",
            "--preset",
            "E2",
            "--dataset",
            str(fixture_dataset),
            "--image_size",
            "32",
            "--world_image_size",
            "32",
            "--max_epochs",
            "4",
            "--batch_size",
            "8",
            "--no-tensorboard",
            "--output_dir",
            str(run_b),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]

    a, b = (json.loads(r.read_text()) for r in (run_a / "config.json", run_b / "config.json"))
    a["train"].pop("output_dir"), b["train"].pop("output_dir")
    a.pop("provenance"), b.pop("provenance")  # the commit that ran each: not a setting
    assert a == b, "the two runs must share every setting but the folder"

    def metrics(run):
        return without([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()], "seconds")

    assert metrics(run_b) == metrics(run_a) and len(metrics(run_a)) == 4
    wa, wb = (load_file(str(resolve_checkpoint(r) / "model.safetensors")) for r in (run_a, run_b))
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not wa[k].equal(wb[k])] == []

    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli_main(["eval-offline", "--checkpoint", str(run_a), "--out", str(out_a)]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "world_modality.cli", "eval-offline", "--checkpoint", str(run_b), "--out", str(out_b)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ra, rb = (json.loads(p.read_text()) for p in (out_a, out_b))
    assert ra.pop("checkpoint") != rb.pop("checkpoint")
    assert ra == rb
    assert set(ra["action_mse"]) == {"predicted", "present", "oracle", "zero", "random", "shuffle"}
    assert "world_mse" in ra
