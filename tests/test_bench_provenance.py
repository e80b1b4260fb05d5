"""Every results file a benchmark writes names the commit its figures came from and the command that measured
them (bench/_common.py emit; the scripts that write their own files add the same two fields)."""

import importlib.util
import json
import sys
from pathlib import Path

from world_modality.provenance import code_commit

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_emit_writes_the_commit_and_the_command(tmp_path, monkeypatch, capsys):
    common = _load("_common")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "some_bench.py"), "--quick", "--out", "a b.json"])
    path = common.emit("some_bench", ["table"], {"figure": 1.0}, {"detail": 2}, out=str(tmp_path / "r.json"))
    saved = json.loads(path.read_text())
    assert saved["commit"] == code_commit(("world_modality", "bench")) and saved["commit"] != "unknown"
    assert saved["command"] == ".venv/bin/python bench/some_bench.py --quick --out 'a b.json'"
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["commit"] == saved["commit"] and last["figure"] == 1.0


def test_real_size_names_the_commit_and_the_command():
    fields = _load("real_size").provenance_fields(["--batch", "2"])
    assert fields["commit"] == code_commit(("world_modality", "bench"))
    assert fields["command"] == ".venv/bin/python bench/real_size.py --batch 2"
