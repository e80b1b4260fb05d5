"""bench/real_size.py: the tiny mode runs the real-size code path on CPU; the written configs are the
real models' (parameter counts on the meta device); without a GPU the real mode exits cleanly. The study slice
(--study-slice --tiny, bench/_study_slice.py) times every stage of both arms and derives one run's GPU hours by
formulas that reproduce its figures; each mode keeps the other's figures in the results file."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "real_size.py"
SLICE_MODULE = ROOT / "bench" / "_study_slice.py"
MODELS_MODULE = ROOT / "bench" / "_real_models.py"


def _load(path: Path = SCRIPT, name: str = "real_size"):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_mode_times_every_part(tmp_path, capsys):
    rs = _load()
    before = rs.RESULT_PATH.read_bytes() if rs.RESULT_PATH.exists() else None
    assert rs.main(["--tiny", "--n", "2", "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["mode"] == "tiny" and result["measured"] is True and result["n"] == 2
    assert result["finite_actions"] is True
    assert set(result["median_ms"]) == set(rs.PARTS)
    assert "predict_actions - backbone - prophet" in result["derived"]["median_ms.head"]  # the one part not timed alone
    assert all(v > 0 for k, v in result["median_ms"].items() if k != "head")
    parts = sum(result["median_ms"][k] for k in ("preprocess", "world_encoder", "backbone", "prophet"))
    assert result["median_ms"]["step"] >= 0.5 * parts
    assert "world_encoder" in "\n".join(lines[:-1]) and result["prompt_tokens"] > 0
    assert result["commit"] not in ("", "unknown") and result["command"].endswith("--tiny --n 2 --warmup 1")
    # The tiny run never writes the real-size results file.
    assert (rs.RESULT_PATH.read_bytes() if rs.RESULT_PATH.exists() else None) == before


def test_written_configs_are_the_real_sizes():
    from transformers import Qwen2_5_VLForConditionalGeneration, VJEPA2Model

    args = _load().parse_args([])
    models = _load(MODELS_MODULE, "real_models")
    _, ids, _ = models.tokenizer_for(args)
    with torch.device("meta"):  # shapes only: no memory, no init
        qwen = Qwen2_5_VLForConditionalGeneration._from_config(models.qwen_config(args, ids), dtype=torch.bfloat16)
        vjepa = VJEPA2Model._from_config(models.vjepa2_config(args), dtype=torch.bfloat16)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(qwen) == pytest.approx(3.75e9, rel=0.01)  # Qwen2.5-VL-3B: 3.75 B with the vision tower
    assert count(qwen.model.visual) == pytest.approx(0.67e9, rel=0.01)
    assert count(vjepa.encoder) == pytest.approx(0.304e9, rel=0.01)  # ViT-L
    assert qwen.config.image_token_id == ids["<|image_pad|>"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_real_mode_without_gpu_exits_cleanly():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last == {"gpu": False, "mode": "real", "measured": False, "reason": "no CUDA GPU"}
    assert "no CUDA GPU" in out.stdout


def test_study_slice_times_each_stage_and_derives_one_run(capsys):
    rs = _load()
    undeclared = _load(ROOT / "bench" / "_common.py", "bench_common").undeclared_derived
    evaluate = _load(ROOT / "tests" / "test_bench_results.py", "bench_results_check").evaluate
    before = rs.RESULT_PATH.read_bytes() if rs.RESULT_PATH.exists() else None
    # One timed call of each stage, no warmup: the test checks the stages and the arithmetic, not the speed.
    assert rs.main(["--study-slice", "--tiny", "--n", "1", "--warmup", "0", "--train-steps", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    s = json.loads(lines[-1])
    assert (s["mode"], s["size"], s["measured"], s["arms"]) == ("study_slice", "tiny", True, ["E2", "E0"])
    assert s["finetune"] == "lora"
    for arm in ("E2", "E0"):
        assert min(s[f"train_step_ms_{arm}"], s[f"val_step_ms_{arm}"], s[f"chunk_ms_{arm}"]) > 0
        assert s[f"samples_per_s_{arm}"] == pytest.approx(2 / (s[f"train_step_ms_{arm}"] / 1000), rel=0.01)
        assert s[f"finite_loss_{arm}"] and s[f"finite_actions_{arm}"]
        assert (s[f"micro_batch_{arm}"], s[f"grad_accum_steps_{arm}"]) == (2, 1)  # no GPU ran out of memory
        assert any(line.startswith(arm) for line in lines[:-1])  # its table row
    # E0 has no world stream: nothing encoded per chunk, no Prophet or memory to train.
    assert s["chunk_world_encoder_ms_E0"] == 0 < s["chunk_world_encoder_ms_E2"]
    assert s["trainable_params_m_E0"] < s["trainable_params_m_E2"] and s["encode_batch_ms"] > 0
    # The study's gpu budget, with the validation episodes data/split.py holds out.
    assert (s["demos_per_task"], s["tasks"], s["epochs"], s["eval_episodes"]) == (50, 10, 20, 500)
    assert (s["train_demos_per_task"], s["val_demos_per_task"]) == (45, 5)
    # Every estimate is named derived, says what it assumes, and its formula reproduces it from the figures.
    assert undeclared(s) == []
    assert {"run_gpu_hours_E2_derived", "run_gpu_hours_E0_derived"} <= set(s["derived"])
    for key, formula in s["derived"].items():
        assert s["derived_assumptions"][key]
        assert evaluate(formula, s) == pytest.approx(s[key], rel=0.01, abs=1e-4), f"{key} = {formula}"
    parts = ("encode_gpu_hours_derived", "train_gpu_hours_E2_derived", "eval_gpu_hours_E2_derived")
    assert s["run_gpu_hours_E2_derived"] == pytest.approx(sum(s[k] for k in parts), abs=1e-4)
    assert "encode_gpu_hours_derived" not in s["derived"]["run_gpu_hours_E0_derived"]  # E0 encodes nothing
    assert s["commit"] not in ("", "unknown") and s["command"].endswith("--train-steps 1")
    assert (rs.RESULT_PATH.read_bytes() if rs.RESULT_PATH.exists() else None) == before  # tiny writes nothing


def test_an_optimiser_step_trains_what_training_trains():
    from world_modality.pipeline import make_collate

    rs, ss = _load(), _load(SLICE_MODULE, "study_slice")
    args = rs.parse_args(["--study-slice", "--tiny"])
    policy, preprocess, _ = rs.build(args, torch.device("cpu"), "E2")
    batches = [make_collate(preprocess)(ss.training_samples(rs, args, policy, 2))]
    params = [p for p in policy.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    policy.train()
    step = ss.optimiser_step(policy, batches, params, torch.optim.AdamW(params, lr=1e-3))
    losses = [step() for _ in range(2)]
    assert {"loss", "action_loss", "world_loss"} <= set(losses[-1])
    changed = [n for n, p in policy.named_parameters() if not torch.equal(p, before[n])]
    assert {"backbone", "prophet", "xattn", "head"} <= {n.split(".")[0] for n in changed}
    # As a study trains a real backbone: frozen but for its LoRA adapters; the world encoder never trains.
    assert [n for n in changed if n.startswith("backbone.") and ".lora_" not in n] == []
    assert [n for n in changed if n.startswith("world_encoder.")] == []


def test_each_mode_keeps_the_other_modes_figures(tmp_path):
    ss = _load(SLICE_MODULE, "study_slice")
    undeclared = _load(ROOT / "bench" / "_common.py", "bench_common").undeclared_derived
    out = tmp_path / "real_size.json"
    head = "predict - backbone - prophet"
    step = {"median_ms": {"step": 1.0, "head": 0.5}, "derived": {"median_ms.head": head}}
    study = {"chunk_ms": 2.0, "x_derived": 4.0, "derived": {"x_derived": "chunk_ms * 2"}}
    study["derived_assumptions"] = {"x_derived": "twice"}
    ss.write_results(out, step, study=False)
    ss.write_results(out, study, study=True)
    ss.write_results(out, {**step, "median_ms": {"step": 3.0, "head": 0.5}}, study=False)
    data = json.loads(out.read_text())
    assert data["median_ms"]["step"] == 3.0 and data["study_slice"] == {"chunk_ms": 2.0, "x_derived": 4.0}
    assert data["derived"] == {"median_ms.head": head, "study_slice.x_derived": "chunk_ms * 2"}
    assert data["derived_assumptions"] == {"study_slice.x_derived": "twice"}
    assert undeclared(data) == []  # the check bench results pass finds each nested formula
    ss.write_results(out, {"chunk_ms": 5.0}, study=True)  # a new slice replaces the old one, formulas too
    data = json.loads(out.read_text())
    assert data["study_slice"] == {"chunk_ms": 5.0} and data["median_ms"]["step"] == 3.0
    assert data["derived"] == {"median_ms.head": head} and "derived_assumptions" not in data


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_study_slice_without_gpu_exits_cleanly(capsys):
    rs = _load()
    before = rs.RESULT_PATH.read_bytes() if rs.RESULT_PATH.exists() else None
    assert rs.main(["--study-slice"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == {
        "gpu": False,
        "mode": "study_slice",
        "measured": False,
        "reason": "no CUDA GPU",
    }
    assert "no CUDA GPU" in out
    assert (rs.RESULT_PATH.read_bytes() if rs.RESULT_PATH.exists() else None) == before
