"""In the simulator: a generation resumed by a later commit is not refused, and the dataset's meta/info.json
lists both commits and the software versions that ran it (its fingerprint does not depend on them)."""

import json
from importlib import metadata

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import pytest

from world_modality import provenance as prov
from world_modality.data.lerobot import load_dataset
from world_modality.sim.generate import PROVENANCE_FILE, generate
from world_modality.toolchain import toolchain

pytestmark = [pytest.mark.sim, pytest.mark.slow]
A = {"commit": "aaaaaaa", "dirty": False}
B = {"commit": "bbbbbbb", "dirty": True}
SETTINGS = {"suite": "libero_spatial", "tasks": [0], "image_size": 32, "seed": 0, "starts": "fresh placements"}


def test_a_generation_staged_before_render_profiles_is_not_continued_with_other_frames(tmp_path):
    """Its frames were rendered with LIBERO's settings: continuing it as `fast` would mix two profiles in one
    dataset, so it is refused naming the profile it was staged with."""
    staging = tmp_path / "ds.partial"
    staging.mkdir()
    (staging / "settings.json").write_text(json.dumps(SETTINGS) + "\n")
    with pytest.raises(ValueError, match=r"other settings .*\"render_profile\": \"libero\".*'render_profile': 'fast'"):
        generate("libero_spatial", [0], 1, tmp_path / "ds", image_size=32, workers=1, seed=0, progress=False)


def test_a_generation_continued_by_a_later_commit_records_both(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    staging = tmp_path / "ds.partial"
    staging.mkdir()
    # An earlier commit started this generation (settings as generate() writes them) and was stopped.
    settings = {**SETTINGS, "render_profile": "fast"}
    (staging / "settings.json").write_text(json.dumps(settings) + "\n")
    (staging / PROVENANCE_FILE).write_text(json.dumps(prov.continued(None, A)))
    monkeypatch.setattr(prov, "provenance", lambda paths=("world_modality",): B)
    generate("libero_spatial", [0], 1, out, image_size=32, workers=1, seed=0, progress=False, job_timeout_s=300)
    info = json.loads((out / "meta" / "info.json").read_text())
    toolchains = info["provenance"].pop("toolchains")
    assert info["provenance"] == {**A, "continued_by": [B]}
    # The software that ran its attempts: a rebuild under another mujoco can say which version moved.
    assert toolchains == [toolchain()] and toolchains[0]["mujoco"] == metadata.version("mujoco")
    before = load_dataset(out).fingerprint()
    info["provenance"] = prov.continued(None, A)
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    assert load_dataset(out).fingerprint() == before
