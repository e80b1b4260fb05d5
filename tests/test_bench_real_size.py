"""bench/real_size.py: the tiny mode runs the real-size code path on CPU; the written configs are the
real models' (parameter counts on the meta device); without a GPU the real mode exits cleanly."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "real_size.py"


def _load():
    spec = importlib.util.spec_from_file_location("real_size", SCRIPT)
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

    rs = _load()
    args = rs.parse_args([])
    _, ids, _ = rs.tokenizer_for(args)
    with torch.device("meta"):  # shapes only: no memory, no init
        qwen = Qwen2_5_VLForConditionalGeneration._from_config(rs.qwen_config(args, ids), dtype=torch.bfloat16)
        vjepa = VJEPA2Model._from_config(rs.vjepa2_config(args), dtype=torch.bfloat16)
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
