"""Bad inputs stop with an error that names the bad value and what was expected (docs/BAD_INPUTS.md).

Rows of the table that older tests already cover point at those tests; this file holds the rest,
and the command-line contract: one line `prog: error: message` on stderr, exit status 2.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config
from world_modality.cli import main as cli_main
from world_modality.config import ConfigError
from world_modality.data.lerobot import DatasetError, load_dataset
from world_modality.evaluate.closed_loop import EvalSettings
from world_modality.pipeline import prepare_data
from world_modality.policy.checkpoint import CheckpointError, load_checkpoint


def cli_error(argv, capsys):
    """Run the CLI; return its one-line error after checking the exit status and the absence of a traceback."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    prog, _, message = err.partition(": error: ")
    assert prog == f"world-modality {argv[0]}", err
    return message


@pytest.mark.parametrize(
    "argv,needles",
    [
        (
            ["train", "--dataset", "{tmp}/nowhere", "--output_dir", "{tmp}/run"],
            ["{tmp}/nowhere does not exist", "meta/info.json"],
        ),
        (["train", "--dataset", "{data}", "--batch_size", "-1"], ["`batch_size` must be >= 1, got -1"]),
        (["train", "--dataset", "{data}", "--image_size", "8"], ["`image_size` must be in [16, 1024], got 8"]),
        (
            ["train", "--dataset", "{data}", "--memory_mode", "future"],
            ["`memory_mode` must be 'predicted' or 'present' in training", "'future'"],
        ),
        (
            ["train", "--dataset", "{data}", "--memory_mode", "oracle", "--output_dir", "{tmp}/run"],
            ["`memory_mode` must be 'predicted' or 'present' in training", "got 'oracle'", "evaluation ablations"],
        ),
        (
            ["train", "--dataset", "{data}", "--memory_mode", "shuffle", "--output_dir", "{tmp}/run"],
            ["`memory_mode` must be 'predicted' or 'present' in training", "'shuffle'"],
        ),
        (
            [
                "train",
                "--dataset",
                "{data}",
                "--instruction_key",
                "instruction",
                "--output_dir",
                "{tmp}/run",
                "--no-tensorboard",
            ],
            ["instruction_key 'instruction' was not found", "keys that hold instructions: ['task']"],
        ),
        (
            ["encode", "--dataset", "{data}", "--latent_suffix", "m0"],
            ["`latent_suffix` must look like 'm4'", "got 'm0'"],
        ),
        (["encode"], ["--dataset PATH is required"]),
        (["eval-offline", "--checkpoint", "{tmp}"], ["is neither a checkpoint folder nor a run folder"]),
        (["eval", "--checkpoint", "{tmp}", "--shard", "3/2"], ["shard must be i/n with 0 <= i < n, got 3/2"]),
        (["eval", "--checkpoint", "{tmp}", "--shard", "a/b"], ["--shard must look like i/n", "'a/b'"]),
        (
            ["eval", "--checkpoint", "{tmp}", "--suite", "libero_spatail"],
            ["Unknown LIBERO suite 'libero_spatail'", "'libero_spatial'"],
        ),
        (["eval", "--checkpoint", "{tmp}", "--tasks", "0,x"], ["--tasks must look like '0,1,4' or '0-9', got '0,x'"]),
        (["eval", "--checkpoint", "{tmp}", "--n_episodes", "0"], ["n_episodes must be >= 1", "got 0"]),
        (["eval", "--checkpoint", "{tmp}", "--tasks", "3-1"], ["--tasks range '3-1' is empty"]),
        (["eval", "--checkpoint", "{tmp}", "--tasks", "1,1"], ["distinct task ids", "'1,1'"]),
        (["eval", "--checkpoint", "{tmp}", "--replan_every", "0"], ["replan_every must be >= 1", "got 0"]),
        (["eval", "--checkpoint", "{tmp}", "--max_steps", "0"], ["max_steps must be >= 1", "got 0"]),
        (
            ["generate", "--suite", "libero_spatial", "--tasks", "0", "--out", "{data}/meta"],
            ["a non-empty folder without a dataset", "expected a new or empty folder"],
        ),
        (
            ["train", "--dataset", "{data}", "--lr", "inf", "--output_dir", "{tmp}/run"],
            ["`lr` must be a finite number > 0, got inf."],
        ),
        (
            ["train", "--dataset", "{data}", "--lr", "0", "--output_dir", "{tmp}/run"],
            ["`lr` must be a finite number > 0, got 0.0."],
        ),
        (
            ["train", "--dataset", "{data}", "--lambda_world", "inf"],
            ["`lambda_world` must be a finite number, got inf."],
        ),
        (["train", "--dataset", "{data}", "--grad_clip", "nan"], ["`grad_clip` must be a finite number, got nan."]),
        (
            ["train", "--dataset", "{data}", "--output_dir", "{data}/meta/info.json"],
            ["--output_dir {data}/meta/info.json is a file; expected a folder for the run"],
        ),
        (
            ["eval-offline", "--checkpoint", "{tmp}", "--batch_size", "0"],
            ["--batch_size must be an integer >= 1, got 0."],
        ),
    ],
    ids=[
        "no-dataset-dir",
        "negative-batch",
        "image-size-8",
        "memory-mode",
        "train-memory-oracle",
        "train-memory-shuffle",
        "instruction-key",
        "latent-suffix",
        "encode-without-dataset",
        "no-checkpoint",
        "shard-3-of-2",
        "shard-not-i-n",
        "misspelt-suite",
        "bad-tasks",
        "zero-episodes",
        "empty-task-range",
        "repeated-task",
        "zero-replan",
        "zero-max-steps",
        "generate-into-data",
        "lr-inf",
        "lr-zero",
        "lambda-world-inf",
        "grad-clip-nan",
        "output-dir-is-a-file",
        "offline-batch-0",
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, needles, fixture_dataset, tmp_path, capsys):
    fill = {"tmp": str(tmp_path), "data": str(fixture_dataset)}
    message = cli_error([a.format(**fill) for a in argv], capsys)
    for needle in needles:
        assert needle.format(**fill) in message, message


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--preset", "E9"], "invalid choice: 'E9'"),
        (["eval", "--checkpoint", "x", "--memory", "oracle"], "invalid choice: 'oracle'"),
    ],
    ids=["unknown-preset", "oracle-closed-loop"],
)
def test_cli_choices_are_checked_by_argparse(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_train_module_reports_a_bad_flag_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "world_modality.train", "--dataset", str(tmp_path), "--lambda_world", "-1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "world_modality.train: error: `lambda_world` must be >= 0, got -1.0."


@pytest.mark.parametrize(
    "settings,needle",
    [
        ({"shard": (3, 2)}, "got 3/2"),
        ({"memory": "oracle"}, "oracle is offline-only"),
        ({"suite": "libero_spatail"}, "Unknown LIBERO suite 'libero_spatail'"),
        ({"n_episodes": 0}, "n_episodes must be >= 1"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"episode_timeout_s": 0}, "episode_timeout_s must be positive seconds or None"),
    ],
    ids=["shard-3-of-2", "oracle", "misspelt-suite", "zero-episodes", "zero-workers", "zero-timeout"],
)
def test_evaluation_settings_fail_before_anything_loads(settings, needle):
    # The checkpoint does not exist: the settings must be refused before anything reads it.
    with pytest.raises(ConfigError, match=needle):
        EvalSettings(checkpoint="/nonexistent", **settings)


def test_missing_video_file_is_named(tmp_path):
    from world_modality.data.fixture import make_fixture_dataset

    root = make_fixture_dataset(tmp_path / "v", n_episodes=2, length=6, image_size=16, use_videos=True)
    victim = next((root / "videos" / "observation.images.image").rglob("*.mp4"))
    victim.unlink()
    ds = load_dataset(root)
    needle = r"video file .*file-000\.mp4 of 'observation.images.image' \(episode 0\) is missing"
    with pytest.raises(DatasetError, match=needle):
        ds.images("observation.images.image")


def test_checkpoint_folder_without_config(tmp_path):
    (tmp_path / "policy.json").write_text(json.dumps({"format": "world-modality-checkpoint/1"}))
    with pytest.raises(CheckpointError, match="expected policy.json and config.json"):
        load_checkpoint(tmp_path)


def test_unknown_camera_names_the_cameras_there_are(fixture_dataset, tmp_path):
    cfg = tiny_config(fixture_dataset, tmp_path, preset="E0", image_keys=("observation.images.side",))
    needle = r"no camera 'observation.images.side'; its cameras are \['observation.images.image'"
    with pytest.raises(ValueError, match=needle):
        prepare_data(cfg, None, progress=False)


def test_annotations_of_another_dataset(fixture_dataset, tmp_path):
    ann = tmp_path / "coc.jsonl"
    ann.write_text(json.dumps({"episode_index": 999, "frame_index": 0, "text": "the block moves"}) + "\n")
    cfg = tiny_config(fixture_dataset, tmp_path, preset="E4", coc_jsonl=str(ann))
    with pytest.raises(ValueError, match="no frame of .* has an annotation in .*coc.jsonl"):
        prepare_data(cfg, None, progress=False)


@pytest.mark.slow
def test_image_size_the_backbone_cannot_patch(fixture_dataset, tmp_path):
    from world_modality.train import train

    cfg = tiny_config(fixture_dataset, tmp_path / "run", preset="E0", image_size=30, max_epochs=1)
    with pytest.raises(ValueError, match="image_size 30 must be a multiple of"):
        train(cfg, progress=False)


def test_dataset_copy_without_its_data_files(fixture_dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fixture_dataset / "meta", root / "meta")
    with pytest.raises(DatasetError, match="no parquet files under .*data; expected data/chunk-"):
        load_dataset(root)


@pytest.mark.slow
def test_offline_evaluation_on_a_dataset_of_another_action_dimension(trained_e2, tmp_path, capsys):
    import numpy as np

    from world_modality.data.fixture import render
    from world_modality.data.writer import LeRobotWriter

    writer = LeRobotWriter(tmp_path / "six", fps=10, image_size=32, action_dim=6, use_videos=False)
    with writer:
        for ep in range(3):
            pos = np.random.default_rng(ep).uniform(0.3, 0.6, (8, 2))
            images = {"observation.images.image": render(pos, 32), "observation.images.wrist_image": render(pos, 32)}
            writer.add_episode(images, np.zeros((8, 8), np.float32), np.zeros((8, 6), np.float32), "pick up the block")
        root = writer.finalize()
    message = cli_error(["eval-offline", "--checkpoint", str(trained_e2), "--dataset", str(root)], capsys)
    assert "has 8-D states and 6-D actions" in message and "trained on 8-D states and 7-D actions" in message


def test_every_test_the_table_names_exists():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    named, path = [], None
    for ref in re.findall(r"`([\w/]+\.py)?::(\w+)", (root / "docs" / "BAD_INPUTS.md").read_text()):
        path = ref[0] or path
        named.append((path, ref[1]))
    assert len(named) >= 40
    missing = [f"{p}::{name}" for p, name in named if f"def {name}(" not in (root / p).read_text()]
    assert not missing, f"docs/BAD_INPUTS.md names tests that do not exist: {missing}"


def test_traceback_variable_shows_where_the_error_was_raised(monkeypatch):
    monkeypatch.setenv("WORLD_MODALITY_TRACEBACK", "1")
    with pytest.raises(ConfigError, match="--dataset PATH is required"):
        cli_main(["encode"])


def test_a_failed_run_leaves_no_run_folder_behind(tmp_path, capsys):
    """Training on a dataset that does not exist created --output_dir and left it empty."""
    argv = ["train", "--dataset", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "runs" / "e2")]
    message = cli_error(argv, capsys)
    assert "does not exist" in message and not (tmp_path / "runs").exists()


def _copy_dataset(fixture_dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fixture_dataset, root, ignore=shutil.ignore_patterns(".cache"))
    return root


@pytest.mark.parametrize(
    "victim,needle",
    [
        ("meta/info.json", "{root}/meta/info.json is not valid JSON ("),
        ("data/chunk-000/file-000.parquet", "{root}/data/chunk-000/file-000.parquet is not a readable parquet file"),
        (
            "meta/episodes/chunk-000/file-000.parquet",
            "{root}/meta/episodes/chunk-000/file-000.parquet is not a readable",
        ),
    ],
    ids=["info-json", "data-parquet", "episodes-parquet"],
)
def test_a_damaged_dataset_file_is_named_before_training(fixture_dataset, tmp_path, capsys, victim, needle):
    root = _copy_dataset(fixture_dataset, tmp_path)
    data = (root / victim).read_bytes()
    (root / victim).write_bytes(data[: len(data) // 2])
    message = cli_error(["train", "--dataset", str(root), "--output_dir", str(tmp_path / "run")], capsys)
    assert needle.format(root=root) in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "victim,needle",
    [
        ("config.json", "{ck}/config.json is not valid JSON ("),
        ("policy.json", "{ck}/policy.json is not valid JSON ("),
    ],
    ids=["config-json", "policy-json"],
)
def test_a_checkpoint_json_that_is_not_json_is_named(trained_e2, tmp_path, capsys, victim, needle):
    ck = Path(shutil.copytree(trained_e2, tmp_path / "ck"))
    (ck / victim).write_text((ck / victim).read_text()[:40])
    message = cli_error(["eval-offline", "--checkpoint", str(ck), "--out", str(tmp_path / "o.json")], capsys)
    assert needle.format(ck=ck) in message, message


def test_a_latent_cache_record_that_is_not_json_is_named(fixture_dataset, tmp_path, capsys):
    root = _copy_dataset(fixture_dataset, tmp_path)
    argv = ["encode", "--preset", "E2", "--dataset", str(root), "--image_size", "32", "--world_image_size", "32"]
    assert cli_main(argv) == 0
    (record,) = (root / ".cache" / "latents").glob("*.json")
    record.write_text("{")
    capsys.readouterr()
    message = cli_error(argv, capsys)
    assert f"latent cache {record} is not valid JSON" in message and f"delete {record}" in message


@pytest.mark.slow
def test_offline_evaluation_of_an_edited_checkpoint_names_the_field_and_keeps_the_latent_cache(
    trained_e2, capsys, tmp_path
):
    """config.json edited from m4 to m2: eval-offline called the dataset's valid latent cache a mismatch and said
    to delete it; deleted, the next run failed differently. The checkpoint is the error, and the cache stays."""
    ck = Path(shutil.copytree(trained_e2, tmp_path / "ck"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["world"]["latent_suffix"] = "m2"
    (ck / "config.json").write_text(json.dumps(cfg))
    caches = sorted((Path(cfg["data"]["dataset"]) / ".cache" / "latents").glob("*"))
    message = cli_error(["eval-offline", "--checkpoint", str(ck), "--out", str(tmp_path / "o.json")], capsys)
    assert f"checkpoint {ck} does not hold together: config.json `latent_suffix` is 'm2'" in message, message
    assert "delete" not in message
    assert sorted((Path(cfg["data"]["dataset"]) / ".cache" / "latents").glob("*")) == caches


@pytest.mark.slow
def test_offline_evaluation_refuses_an_output_path_it_cannot_write_before_loading(trained_e2, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    message = cli_error(["eval-offline", "--checkpoint", str(trained_e2), "--out", str(tmp_path / "folder")], capsys)
    assert message == f"--out {tmp_path / 'folder'} is a folder; expected the path of a JSON file to write."
