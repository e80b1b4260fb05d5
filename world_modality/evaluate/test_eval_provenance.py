"""In the simulator: an evaluation continued by a later commit is resumed, not refused; settings.json lists both
commits outside the identity, and each episode line names the commit that ran it."""

import json

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import pytest

from world_modality.evaluate import closed_loop
from world_modality.evaluate.closed_loop import EvalSettings, evaluate
from world_modality.toolchain import toolchain

pytestmark = [pytest.mark.sim, pytest.mark.slow]


@pytest.fixture(scope="module")
def checkpoint(fixture_dataset, tmp_path_factory):
    from conftest import tiny_config
    from world_modality.train import train

    return train(tiny_config(fixture_dataset, tmp_path_factory.mktemp("prov") / "e2", max_epochs=1), progress=False)


def test_a_later_commit_continues_an_evaluation_and_is_listed(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    base = dict(checkpoint=str(checkpoint), suite="libero_spatial", tasks=(0,), workers=1, out=str(out))
    base.update(max_steps=3, device="cpu")
    monkeypatch.setattr(closed_loop, "provenance", lambda: {"commit": "aaaaaaa", "dirty": False})
    first = evaluate(EvalSettings(n_episodes=1, **base), progress=False)
    identity = first.settings["identity"]
    monkeypatch.setattr(closed_loop, "provenance", lambda: {"commit": "bbbbbbb", "dirty": True})
    second = evaluate(EvalSettings(n_episodes=2, **base), progress=False)
    assert len(second.finished) == 2 and second.finished[0] == first.finished[0]  # resumed, not rerun
    saved = json.loads((out / "settings.json").read_text())
    assert saved["identity"] == identity and "provenance" not in saved["identity"]
    assert saved["provenance"] == {
        "commit": "aaaaaaa",
        "dirty": False,
        "continued_by": [{"commit": "bbbbbbb", "dirty": True}],
        "toolchains": [toolchain()],  # one software stack ran both
    }
    assert [r["commit"] for r in second.finished] == ["aaaaaaa", "bbbbbbb-dirty"]
