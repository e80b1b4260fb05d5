"""The cheapest benchmarks in their smallest mode: each ends with one JSON line holding its ratios."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
META = ("derived", "derived_assumptions")

CASES = {
    "inference": (
        "calls_per_s_e2",
        "actions_per_s_e2_derived",
        "ratio_e2_calls_per_s_vs_20hz_goal",
        "ratio_e2_time_vs_e0",
        "split_ms_e2",
    ),
    "encode": (
        "frames_per_s_cache",
        "frames_per_s_naive",
        "ratio_cache_vs_naive_5_epochs_derived",
        "ratio_cache_vs_naive_one_epoch",
    ),
    "training": ("samples_per_s_e0", "samples_per_s_e2", "ratio_e2_vs_e0_samples_per_s", "ratio_e2_vs_e0_peak_rss"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_prints_its_figures_as_the_last_line(name, tmp_path):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == name
    for key in CASES[name]:
        assert key in last, f"{name}: no {key!r} in {sorted(last)}"
    for key in (k for k in CASES[name] if k.startswith("ratio")):
        assert last[key] > 0
    assert not [k for k in last if "derived" in k and k not in META and k not in last["derived"]]
    assert json.loads(out.read_text())["benchmark"] == name
