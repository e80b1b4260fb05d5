"""`study` with real models and public data: the backbone, world-encoder and dataset flags reach every run and the
identity (a default study's identity unchanged), real weights are found on disk or refused, arms that read what the
data lacks are refused, and a fixture-sized study trains a saved real-class Qwen2.5-VL on the public schema."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from world_modality.cli import build_parser, main
from world_modality.config import ConfigError
from world_modality.study.settings import command_line, run_config, settings_from_args

# libero_spatial task 0's instruction as LIBERO gives it (and the public data stores it).
SPATIAL_0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"
QWEN_HUB_ID = "Qwen/Qwen2.5-VL-3B-Instruct"


def _args(out: Path, *extra: str):
    return build_parser().parse_args(["study", "--suites", "libero_spatial", "--seeds", "0", "--out", str(out), *extra])


def _settings(out: Path, *extra: str, world_encoder: str | None = None):
    return settings_from_args(_args(out, *extra, *(("--world-encoder", world_encoder) if world_encoder else ())))


def _libero_fixture(root: Path, n_episodes: int = 2, length: int = 24, image_size: int = 64) -> Path:
    """The public-schema fixture of one task, named as the public data names libero_spatial task 0."""
    from world_modality.data.public_fixture import make_public_fixture

    src = make_public_fixture(root, n_episodes=n_episodes, length=length, n_tasks=1, image_size=image_size)
    tasks = pq.read_table(src / "meta" / "tasks.parquet")  # the task string is the unnamed pandas index
    i = tasks.column_names.index("__index_level_0__")
    pq.write_table(tasks.set_column(i, "__index_level_0__", pa.array([SPATIAL_0])), src / "meta" / "tasks.parquet")
    path = src / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    eps = pq.read_table(path)
    eps = eps.set_column(eps.column_names.index("tasks"), "tasks", pa.array([[SPATIAL_0]] * eps.num_rows))
    pq.write_table(eps, path)
    return src


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> Path:
    return _libero_fixture(tmp_path_factory.mktemp("public") / "libero", image_size=64)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    from world_modality.policy.test_real_backbones import save_tiny_pretrained

    return Path(save_tiny_pretrained(tmp_path_factory.mktemp("qwen"), "qwen2.5-vl"))


@pytest.fixture(scope="module")
def vjepa2_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import VJEPA2Model

    from world_modality.world.vjepa2_loading import tiny_vjepa2_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vjepa2") / "tiny-vjepa2"
    VJEPA2Model(tiny_vjepa2_config(4, 32)).save_pretrained(path)
    return path


def test_a_default_study_keeps_its_identity_and_command_line(tmp_path):
    s = _settings(tmp_path / "s", "--suites", "libero_spatial,libero_object,libero_goal,libero_10")
    # The keys a default study had before models and data were settings: a study running now must continue.
    assert list(s.identity()) == [
        "suites",
        "experiments",
        "seeds",
        "pro",
        "tasks",
        "episodes_per_task",
        "pro_episodes",
        "max_steps",
        "demos_per_task",
        "epochs",
        "batch_size",
        "image_size",
        "world_image_size",
        "joint",
        "lr_schedule",
        "world_encoder",
        "pretrain_steps",
        "pretrain_batch_size",
        "pretrain_seed",
    ]
    out = tmp_path / "s"
    assert command_line(s) == (
        "world-modality study --suites libero_spatial,libero_object,libero_goal,libero_10 --experiments E0,E2 "
        "--seeds 0 --demos-per-task 30 --epochs 12 --batch-size 16 --image-size 128 --world-image-size 64 --workers 2 "
        f"--lr-schedule cosine --pretrain-steps 2000 --pretrain-batch-size 32 --pretrain-seed 0 --out {out} "
        f"--data {out / 'data'}"
    )
    cfg = run_config(s, "E2", "libero_spatial", 0, tmp_path / "d", tmp_path / "r")
    assert (cfg.policy.backbone, cfg.policy.backbone_path, cfg.policy.freeze_backbone) == (
        "tiny-qwen2.5-vl",
        None,
        False,
    )


def test_model_flags_reach_every_run_config_the_identity_and_the_command_line(tmp_path, qwen_dir, vjepa2_dir):
    from world_modality.study.shards import study_runs

    flags = ["--experiments", "E0,E2,E2-Present,E2-State", "--backbone", "qwen2.5-vl", "--backbone_path"]
    flags += [str(qwen_dir), "--backbone-dtype", "bfloat16", "--image-size", "64"]
    flags += ["--world-encoder-path", str(vjepa2_dir), "--world_encoder_dtype", "float32"]
    s = _settings(tmp_path / "s", *flags, world_encoder="vjepa2")
    for suite, e, seed in study_runs(s):
        cfg = run_config(s, e, suite, seed, tmp_path / "d", tmp_path / "r")
        p, w = cfg.policy, cfg.world
        assert (p.backbone, p.backbone_path, p.backbone_dtype) == ("qwen2.5-vl", str(qwen_dir), "bfloat16")
        assert p.freeze_backbone and p.use_lora  # a real backbone trains frozen, with LoRA adapters
        if e in ("E2", "E2-Present"):  # the arms --world-encoder governs take the real V-JEPA 2
            assert (w.world_encoder, w.world_encoder_path, w.world_encoder_dtype) == (
                "vjepa2",
                str(vjepa2_dir),
                "float32",
            )
        else:
            assert w.world_encoder_path is None and w.world_encoder == (
                "env_state" if e == "E2-State" else "tiny-vjepa2"
            )
    ident = s.identity()
    assert {k: ident[k] for k in ("backbone", "backbone_path", "backbone_dtype", "world_encoder")} == {
        "backbone": "qwen2.5-vl",
        "backbone_path": str(qwen_dir),
        "backbone_dtype": "bfloat16",
        "world_encoder": "vjepa2",
    }
    assert (ident["world_encoder_path"], ident["world_encoder_dtype"]) == (str(vjepa2_dir), "float32")
    assert "pretrain_steps" not in ident  # no arm pretrains
    words = shlex.split(command_line(s))
    assert words[words.index("--backbone-path") + 1] == str(qwen_dir)
    assert words[words.index("--world-encoder-path") + 1] == str(vjepa2_dir)
    assert words[words.index("--world-encoder") + 1] == "vjepa2"
    # Without the real encoder the recorded command rebuilds the very study (the CLI parses it back).
    plain = _settings(
        tmp_path / "s", "--backbone", "qwen2.5-vl", "--backbone-path", str(qwen_dir), "--image-size", "64"
    )
    assert settings_from_args(build_parser().parse_args(shlex.split(command_line(plain))[1:])) == plain
    assert "world_encoder_path" not in plain.identity() and plain.world_encoder_path is None
    # E2-Pretrained keeps the study's pretrained tiny encoder: beside E2 on V-JEPA 2, the report would mislabel them.
    with pytest.raises(ConfigError, match="E2 and E2-Pretrained with --world-encoder vjepa2"):
        both = ["--experiments", "E0,E2,E2-Pretrained", "--world-encoder-path", str(vjepa2_dir)]
        _settings(tmp_path / "s", *both, world_encoder="vjepa2")


def test_the_gpu_budget_names_real_models_and_refuses_without_their_weights(tmp_path, monkeypatch, qwen_dir):
    from huggingface_hub import constants

    from world_modality.study.settings import BUDGETS

    gpu = BUDGETS["gpu"]
    assert (gpu.backbone, gpu.backbone_path, gpu.backbone_dtype) == ("qwen2.5-vl", QWEN_HUB_ID, "bfloat16")
    assert (gpu.world_encoder, gpu.world_encoder_path) == ("vjepa2", "facebook/vjepa2-vitl-fpc64-256")
    assert gpu.image_size % 28 == 0  # Qwen2.5-VL's merged patch
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    out = tmp_path / "s"
    said = rf"--backbone-path {QWEN_HUB_ID} \(the backbone of --budget gpu\): no config.json .* hub cache {cache}"
    with pytest.raises(ConfigError, match=said + r".*or point --backbone-path at a local folder"):
        _settings(out, "--budget", "gpu", world_encoder="pretrained")
    assert main(["study", "--budget", "gpu", "--out", str(out)]) == 2
    assert not out.exists()  # refused before anything ran
    # The weights in the hub cache (as `hf download` leaves them): found there, nothing downloaded.
    repo = cache / f"models--{QWEN_HUB_ID.replace('/', '--')}"
    shutil.copytree(qwen_dir, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    assert _settings(out, "--budget", "gpu", world_encoder="pretrained").backbone_path == QWEN_HUB_ID
    with pytest.raises(ConfigError, match=r"--world-encoder-path facebook/vjepa2-vitl-fpc64-256 \(the V-JEPA 2"):
        _settings(out, "--budget", "gpu", world_encoder="vjepa2")


@pytest.mark.parametrize(
    "flags,said",
    [
        (["--backbone-path", "{qwen}"], "given with --backbone tiny-qwen2.5-vl, which has no weights"),
        (["--backbone", "smolvlm", "--backbone-path", "{qwen}"], "holds a 'qwen2_5_vl' model; smolvlm expects"),
        (["--backbone", "qwen2.5-vl", "--backbone-path", "{empty}"], r"no config.json of a qwen2.5-vl model in the fo"),
        (
            ["--backbone", "qwen2.5-vl", "--backbone-path", "{config_only}"],
            "holds the config of a qwen2.5-vl model but no",
        ),
        (["--backbone", "qwen2.5-vl"], "qwen2.5-vl needs --backbone-path"),
        (
            ["--backbone", "qwen2.5-vl", "--backbone-path", "{qwen}", "--image-size", "56"],
            "56 must be a multiple of 32",
        ),
        (["--world-encoder-path", "{qwen}"], "no arm of --experiments E0,E2 uses the real V-JEPA 2"),
    ],
)
def test_bad_model_flags_are_refused_before_anything_runs(tmp_path, qwen_dir, flags, said):
    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    shutil.copy(qwen_dir / "config.json", tmp_path / "config_only")
    where = {"qwen": str(qwen_dir), "empty": str(tmp_path / "empty"), "config_only": str(tmp_path / "config_only")}
    flags = [f.format(**where) for f in flags]
    with pytest.raises(ConfigError, match=said):
        _settings(tmp_path / "s", "--world-encoder", "random", *flags)
    assert main(["study", "--world-encoder", "random", "--out", str(tmp_path / "s"), *flags]) == 2
    assert not (tmp_path / "s").exists()


def test_real_model_types_are_the_loaders(vjepa2_dir):
    from transformers import VJEPA2Model

    from world_modality.policy.backbone import QWEN_CLASSES
    from world_modality.policy.smolvlm import MODEL_CLASSES
    from world_modality.study.real_models import MODEL_TYPES

    assert MODEL_TYPES["qwen2.5-vl"] == tuple(QWEN_CLASSES) and MODEL_TYPES["smolvlm"] == tuple(MODEL_CLASSES)
    assert MODEL_TYPES["vjepa2"] == (VJEPA2Model.config_class.model_type,)


def test_an_arm_that_reads_what_the_data_lacks_is_refused_naming_the_key(tmp_path, public):
    out = tmp_path / "s"
    flags = ["--experiments", "E0,E2-State", "--dataset", str(public)]
    with pytest.raises(ConfigError, match=r"E2-State reads observation.environment_state .*does not record"):
        _settings(out, *flags)
    assert main(["study", "--suites", "libero_spatial", "--out", str(out), *flags]) == 2
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"--dataset .*nowhere: no .*meta/info.json.*nothing is downloaded"):
        _settings(out, "--dataset", str(tmp_path / "nowhere"))


@pytest.mark.sim
def test_dataset_tasks_are_found_by_instruction_or_refused(tmp_path, public):
    from world_modality.study.public_data import render, resolve, select

    said = r"holds no episode of libero_spatial task 1 \('pick up the black bowl next to.*holds 1 task\(s\): 'pick up"
    with pytest.raises(ConfigError, match=said):
        _settings(tmp_path / "s", "--tasks", "0,1", "--dataset", str(public))
    s = _settings(tmp_path / "s", "--tasks", "0", "--dataset", str(public), "--demos-per-task", "1")
    # A hub-cache id already on disk names the same data (its snapshot, as `hf download` leaves it).
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "datasets--HuggingFaceVLA--libero"
    shutil.copytree(public, repo / "snapshots" / "0abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0abc")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        hub = _settings(tmp_path / "s", "--tasks", "0", "--dataset", "HuggingFaceVLA/libero")
        assert resolve(hub.dataset) == repo / "snapshots" / "0abc"
    assert s.identity()["dataset"] == str(public) and f"--dataset {public}" in command_line(s)
    got = select(s, "libero_spatial", {"libero_spatial": [0]})
    assert got["demos"] == {0: 1}  # the first --demos-per-task episodes of the task
    assert got["training_data"]["held_out_starts"].startswith("not checked")
    section = "\n".join(render({"libero_spatial": got["training_data"]}))
    assert f"`{public}` (fingerprint " in section and "| libero_spatial | 1 | not checked: " in section
    from world_modality.data.lerobot import load_dataset

    ds = load_dataset(got["dataset"], progress=False)
    assert [(e.index, e.task) for e in ds.episodes] == [(0, SPATIAL_0)]
    assert ds.images("observation.images.image", 16).shape[0] == len(ds)  # the source's video, linked


@pytest.mark.slow
@pytest.mark.sim
def test_a_study_on_the_public_schema_with_real_class_models_runs_end_to_end(tmp_path, public, qwen_dir, vjepa2_dir):
    out, data = tmp_path / "study", tmp_path / "data"
    flags = ["--tasks", "0", "--experiments", "E0,E2", "--dataset", str(public)]
    flags += ["--world-encoder", "vjepa2", "--world-encoder-path", str(vjepa2_dir)]
    flags += ["--backbone", "qwen2.5-vl", "--backbone-path", str(qwen_dir), "--demos-per-task", "2", "--epochs", "1"]
    flags += ["--image-size", "64", "--world-image-size", "32", "--episodes-per-task", "1", "--max-steps", "8"]
    flags += ["--workers", "1", "--batch-size", "8"]
    assert (
        main(["study", "--suites", "libero_spatial", "--seeds", "0", *flags, "--out", str(out), "--data", str(data)])
        == 0
    )
    study = json.loads((out / "study.json").read_text())
    assert study["settings"]["dataset"] == str(public) and study["settings"]["backbone_path"] == str(qwen_dir)
    assert study["settings"]["world_encoder_path"] == str(vjepa2_dir)
    res = study["results"]
    assert res["demonstrations"] == {"libero_spatial": {"0": 2}}
    assert {e: res["standard"][e]["libero_spatial"]["n"] for e in ("E0", "E2")} == {"E0": 1, "E2": 1}
    assert all(a["backbone"] == f"qwen2.5-vl from {qwen_dir}, frozen" for a in res["arms"].values())
    assert res["arms"]["E2"]["world_encoder"] == f"vjepa2 encoder, weights from {vjepa2_dir}"
    assert "dataset/libero_spatial" in study["seconds"] and "generate/libero_spatial" not in study["seconds"]
    inputs = json.loads((out / "report_inputs.json").read_text())
    assert inputs["suites"]["libero_spatial"]["training_data"]["held_out_starts"].startswith("not checked")
    for e in ("e0", "e2"):  # evaluation checked its starts against what the data records: nothing, and says so
        overlap = json.loads(
            (out / "runs" / "libero_spatial" / f"{e}-seed0" / "eval" / "libero_spatial" / "settings.json").read_text()
        )["overlap"]
        assert overlap["checked"] is False and "records no start states" in overlap["how"]
