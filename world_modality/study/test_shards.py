"""Shards and `study merge` on studies whose simulator stages are stand-ins: the assignment of runs, refusals, missing
runs, a merge that equals the unsharded study, and artifacts whose hash changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from world_modality.cli import main
from world_modality.config import ConfigError
from world_modality.toolchain import toolchain

STUDY = ["--suites", "libero_spatial", "--tasks", "0,1", "--experiments", "E0,E2", "--seeds", "0,1"]
STUDY += ["--pro", "swap", "--episodes-per-task", "2", "--pro-episodes", "1"]
STUDY += ["--world-encoder", "random"]  # the pretraining stage's own shards are in test_world_encoder.py


def _settings(out: Path, *extra: str):
    from world_modality.cli import build_parser
    from world_modality.study.settings import settings_from_args

    return settings_from_args(build_parser().parse_args(["study", *STUDY, "--out", str(out), *extra]))


def test_runs_are_dealt_round_robin_from_the_sorted_runs_and_bad_shards_are_refused(tmp_path, capsys):
    from world_modality.study.settings import command_line
    from world_modality.study.shards import shard_runs, study_runs
    from world_modality.study.stages import shard_plan

    s = _settings(tmp_path / "s", "--suites", "libero_spatial,libero_goal", "--experiments", "E2,E0", "--pro", "")
    runs = study_runs(s)
    assert runs[:3] == [("libero_goal", "E0", 0), ("libero_goal", "E0", 1), ("libero_goal", "E2", 0)]
    parts = [shard_runs(s, (i, 3)) for i in (1, 2, 3)]
    assert parts[0] == runs[0::3] and sorted(r for p in parts for r in p) == runs  # disjoint, covering
    # The order flags are given in does not change the assignment.
    again = _settings(tmp_path / "s", "--suites", "libero_goal,libero_spatial", "--experiments", "E0,E2", "--pro", "")
    assert shard_runs(again, (2, 3)) == parts[1]
    # A shard generates only the datasets its runs train on.
    one = _settings(tmp_path / "s", "--suites", "libero_spatial,libero_goal", "--pro", "", "--shard", "2/8")
    assert one.shard == (2, 8) and "--shard 2/8" in command_line(one)
    assert shard_plan(one, shard_runs(one, one.shard)) == [
        ("generate", "libero_goal"),
        ("train", "libero_goal", "E0", 1),
        ("eval", "libero_goal", "E0", 1, "libero_goal"),
    ]
    for value, said in [
        ("0/2", "1 <= i <= n"),
        ("3/2", "1 <= i <= n"),
        ("a/b", "expected i/n"),
        ("2", "expected i/n"),
        ("1/5", "the study has 4 run"),
    ]:
        with pytest.raises(ConfigError, match=f"--shard '{value}': .*{said}"):
            _settings(tmp_path / "s", "--shard", value)
    assert main(["study", *STUDY, "--out", str(tmp_path / "bad"), "--shard", "0/2"]) == 2
    assert not (tmp_path / "bad").exists()
    capsys.readouterr()
    # A study flag given with merge would be dropped silently: the settings come from the shards.
    assert main(["study", "--seeds", "3", "merge", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "study merge: error: `study merge` takes shard folders and --out only, got study flags --seeds" in (
        capsys.readouterr().err
    )


def _checkpoint(run: Path, weights: bytes) -> Path:
    ckpt = run / "checkpoints" / "step-1"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "model.safetensors").write_bytes(weights)
    return ckpt


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    """Stand-ins for generation (a small real dataset, so its fingerprint is real), training (a checkpoint whose
    weights name the run) and evaluation (outcomes fixed by run and start)."""
    from world_modality.study import stages
    from world_modality.study.test_study import _suite_dataset

    data = _suite_dataset(tmp_path / "data" / "libero_spatial", "libero_spatial", ["bowl"])
    weights = {}

    def train(s, suite, experiment, seed, dataset):
        run = stages.run_dir(s, suite, experiment, seed)
        return _checkpoint(run, weights.get((experiment, seed), f"{suite}/{experiment}/{seed}".encode()))

    def evaluate(s, ckpt, train_suite, experiment, seed, suite, tasks, n, init_states=None):
        wins = lambda t, k: (t + k + seed + (experiment == "E2")) % 3 != 0  # noqa: E731
        eps = [
            {"suite": suite, "task_id": t, "init_index": k, "success": wins(t, k), "seed": 0}
            for t in tasks
            for k in range(n)
        ]
        return {"episodes": eps, "errors": [], "protocol": {"suite": suite, "step_limit": 20, "seed": 0}}

    monkeypatch.setattr(stages, "generate_suite", lambda s, suite, tasks: {"dataset": str(data), "demos": {0: 2, 1: 2}})
    monkeypatch.setattr(stages, "train_run", train)
    monkeypatch.setattr(stages, "eval_run", evaluate)
    return {"root": tmp_path, "data": data, "weights": weights}


def _study(out: Path, *extra: str) -> int:
    return main(["study", *STUDY, "--out", str(out), *extra])


def _results(folder: Path) -> dict:
    res = json.loads((folder / "study.json").read_text())["results"]
    return {k: v for k, v in res.items() if k != "provenance"}


def test_merged_shards_equal_the_unsharded_study_and_refusals(fake_stages, capsys):
    root = fake_stages["root"]
    assert _study(root / "whole") == 0
    assert _study(root / "s1", "--shard", "1/2") == 0 and _study(root / "s2", "--shard", "2/2") == 0
    shard = json.loads((root / "s1" / "shard.json").read_text())
    assert shard["shard"] == "1/2" and shard["runs"] == [["libero_spatial", "E0", 0], ["libero_spatial", "E2", 0]]
    assert not (root / "s1" / "report.md").exists()
    assert "runs/*/*/checkpoints/" in (root / "s1" / ".gitignore").read_text().splitlines()
    hashes = json.loads((root / "s1" / "artifacts.json").read_text())
    assert set(hashes["checkpoints"]) == {"libero_spatial/E0/0", "libero_spatial/E2/0"}
    assert len(hashes["checkpoints"]["libero_spatial/E0/0"]["sha256"]["model.safetensors"]) == 64

    # What a repository keeps of each shard, somewhere else: no dataset, no checkpoint, no absolute path valid.
    moved = root / "elsewhere"
    for name in ("s1", "s2"):
        shutil.copytree(root / name, moved / name, ignore=shutil.ignore_patterns("checkpoints", "data"))
        shutil.rmtree(root / name)
    assert main(["study", "merge", str(moved / "s1"), str(moved / "s2"), "--out", str(root / "merged")]) == 0
    assert _results(root / "merged") == _results(root / "whole")
    merged = json.loads((root / "merged" / "study.json").read_text())
    assert [sh["shard"] for sh in merged["shards"]] == ["1/2", "2/2"] and all(sh["commits"] for sh in merged["shards"])
    assert "## Shards" in (root / "merged" / "report.md").read_text()
    assert merged["seconds"].keys() == json.loads((root / "whole" / "study.json").read_text())["seconds"].keys()

    # One shard alone: a report all the same, its missing runs named and marked, and a non-zero exit.
    capsys.readouterr()
    assert main(["study", "merge", str(moved / "s1"), "--out", str(root / "half")]) == 1
    assert "libero_spatial/E0/1 (shard 2/2), libero_spatial/E2/1 (shard 2/2)" in capsys.readouterr().out
    half = json.loads((root / "half" / "study.json").read_text())["results"]
    assert [m["run"] for m in half["missing_runs"]] == ["libero_spatial/E0/1", "libero_spatial/E2/1"]
    assert half["standard"]["E0"]["libero_spatial"]["n"] == 4  # seed 0's episodes only
    report = (root / "half" / "report.md").read_text()
    assert "**Incomplete: 2 run(s) missing" in report and "seed 1 missing (no shard given holds this run)" in report

    # Two folders that ran the same episode: nothing is chosen between them.
    shutil.copytree(moved / "s1", root / "copy")
    with pytest.raises(ConfigError, match=r"s1 and .*copy both ran episode libero_spatial/E0/0 on libero_spatial"):
        _merge(moved / "s1", root / "copy", out=root / "m")
    with pytest.raises(ConfigError, match="both ran episode"):
        _merge(moved / "s2", root / "whole", out=root / "m")  # a whole study holds every shard's episodes

    with pytest.raises(ConfigError, match=r"data holds no study_settings.json; expected the --out folder of a"):
        _merge(moved / "s1", root / "data", out=root / "m")
    (root / "copy" / "report_inputs.json").unlink()  # a shard that has not finished a run of its command
    with pytest.raises(ConfigError, match=r"copy/report_inputs.json is missing: that shard has not finished"):
        _merge(moved / "s2", root / "copy", out=root / "m")
    with pytest.raises(ConfigError, match=r"s2 is given twice"):
        _merge(moved / "s2", moved / "s1" / ".." / "s2", out=root / "m")
    with pytest.raises(ConfigError, match=r"--out .*s2 is a study's folder"):
        _merge(moved / "s1", out=moved / "s2")  # its own files would be overwritten

    # Shards of another study's settings, named with both folders.
    other = root / "other"
    shutil.copytree(moved / "s2", other)
    settings = json.loads((other / "study_settings.json").read_text())
    (other / "study_settings.json").write_text(json.dumps({**settings, "epochs": 9}))
    with pytest.raises(ConfigError, match=r"s1 and .*other are shards of studies with other settings \(--epochs: "):
        _merge(moved / "s1", other, out=root / "m")

    # Another dataset fingerprint in one shard: refused, not mixed, naming the simulator version that moved.
    for shard, mujoco in (("s1", "3.17.0"), ("s2", "3.16.0")):
        hashes = json.loads((moved / shard / "artifacts.json").read_text())
        hashes["datasets"]["libero_spatial"]["toolchains"] = [{"mujoco": mujoco, "numpy": "2.4.6"}]
        if shard == "s2":
            hashes["datasets"]["libero_spatial"]["fingerprint"] = "0" * 16
        (moved / shard / "artifacts.json").write_text(json.dumps(hashes))
    refused = r"different libero_spatial datasets: fingerprint \w{16} in .*s1, 0{16} in"
    with pytest.raises(ConfigError, match=refused) as e:
        _merge(moved / "s1", moved / "s2", out=root / "m")
    assert f"generated them: mujoco 3.16.0 ({moved / 's2'}) vs 3.17.0 ({moved / 's1'})." in str(e.value)
    assert not (root / "m").exists()


def _merge(*folders: Path, out: Path) -> int:
    from world_modality.study.merge import merge

    return merge(list(folders), out)


def test_a_changed_dataset_or_checkpoint_is_refused_on_rerun(fake_stages, capsys):
    from world_modality.study.run import run_study

    root = fake_stages["root"]
    info = fake_stages["data"] / "meta" / "info.json"
    record = json.loads(info.read_text())
    record["provenance"]["toolchains"] = [toolchain()]  # as generation records the software that wrote it
    info.write_text(json.dumps(record, indent=4))
    assert _study(root / "s1", "--shard", "1/2") == 0
    assert _study(root / "s1", "--shard", "1/2") == 0  # the same artifacts: the shard continues
    with pytest.raises(ConfigError, match=r"holds --shard 1/2, not --shard 2/2"):
        run_study(_settings(root / "s1", "--shard", "2/2"))

    fake_stages["weights"][("E2", 0)] = b"retrained otherwise"
    capsys.readouterr()
    assert _study(root / "s1", "--shard", "1/2") == 2
    err = capsys.readouterr().err
    assert "checkpoint " in err and "of run libero_spatial/E2/0 differs" in err and "model.safetensors" in err
    fake_stages["weights"].clear()

    # Rebuilt under another mujoco (provenance, outside the fingerprint), with other bytes.
    record = json.loads(info.read_text())
    record["provenance"]["toolchains"] = [{**toolchain(), "mujoco": "3.18.0"}]
    info.write_text(json.dumps(record, indent=4).replace('"placement_seed": 7', '"placement_seed": 8', 1))
    assert _study(root / "s1", "--shard", "1/2") == 2
    err = capsys.readouterr().err
    # Named with the fingerprint the runs used, which stays recorded: the changed dataset trained nothing.
    recorded = json.loads((root / "s1" / "artifacts.json").read_text())["datasets"]["libero_spatial"]
    assert "has fingerprint " in err and f"used {recorded['fingerprint']} (dataset libero_spatial" in err
    # And the software version that moved between the two.
    assert recorded["toolchains"] == [toolchain()]
    assert f"generated them: mujoco 3.18.0 (this dataset) vs {toolchain()['mujoco']} (the one they used) (" in err


def test_a_shards_results_checked_into_this_repository_are_not_ignored_by_it():
    # A shard's folder under results/ holds its episodes under runs/: the repository's own ignore rules must leave
    # them to the folder's .gitignore (a top-level "runs/" rule once hid every episode of a committed shard).
    import subprocess

    root = Path(__file__).resolve().parents[2]
    shard = "results/study_x/shard-1of2/runs/libero_spatial/e0-seed0"
    kept = [
        f"{shard}/eval/libero_spatial/episodes.jsonl",
        f"{shard}/metrics.jsonl",
        "results/study_x/shard-1of2/x.json",
    ]
    ignored = ["runs/study/report.md"]  # the default --out of every command stays out
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *kept, *ignored], cwd=root, capture_output=True, text=True
    )
    assert proc.stdout.split() == ignored, proc.stdout + proc.stderr


def test_a_checkpoint_whose_weights_changed_is_refused_naming_the_file_and_both_hashes(tmp_path):
    from world_modality.policy.checkpoint_store import WEIGHT_FILES
    from world_modality.study.artifacts import ArtifactMismatch, Artifacts

    ckpt = tmp_path / "runs" / "libero_spatial" / "e0-seed0" / "checkpoints" / "step-1"
    ckpt.mkdir(parents=True)
    weights = ckpt / WEIGHT_FILES[0]
    weights.write_bytes(b"trained")
    first = Artifacts(tmp_path).check_checkpoint("libero_spatial/E0/0", ckpt)
    assert Artifacts(tmp_path).check_checkpoint("libero_spatial/E0/0", ckpt) == first  # read back, same weights
    weights.write_bytes(b"retrained")
    with pytest.raises(
        ArtifactMismatch, match=rf"sha256 of {WEIGHT_FILES[0]} \w{{16}} now, {first[WEIGHT_FILES[0]][:16]} recorded"
    ):
        Artifacts(tmp_path).check_checkpoint("libero_spatial/E0/0", ckpt)
