"""Chain-of-causation annotation reading and joining."""

import json

import pytest

from world_modality.data.coc import AnnotationError, join_annotations, read_annotations
from world_modality.data.fixture import make_fixture_dataset
from world_modality.data.lerobot import load_dataset


def test_join_counts(tmp_path):
    ds = load_dataset(make_fixture_dataset(tmp_path / "ds", n_episodes=3, length=5))
    lines = [{"episode_index": e, "frame_index": f, "text": f"e{e}f{f}"} for e in (0, 2) for f in range(0, 5, 2)]
    lines.append({"episode_index": 9, "frame_index": 0, "text": "not in the data"})
    path = tmp_path / "coc.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ann = read_annotations(path)
    assert len(ann) == 7
    texts, missing = join_annotations(ds, ann)
    assert len(texts) == len(ds) and missing == len(ds) - 6
    assert texts[2] == "e0f2" and texts[10 + 4] == "e2f4" and texts[5] is None


def test_errors(tmp_path):
    with pytest.raises(AnnotationError, match="missing.jsonl"):
        read_annotations(tmp_path / "missing.jsonl")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"episode_index": 0, "frame_index": 0, "text": "ok"}\n{"episode_index": 0, "text": "x"}\n')
    with pytest.raises(AnnotationError, match=r"bad.jsonl:2"):
        read_annotations(path)
    path.write_text('{"episode_index": 0, "frame_index": 0, "text": "ok"}\nnot json\n')
    with pytest.raises(AnnotationError, match=r":2: malformed"):
        read_annotations(path)
