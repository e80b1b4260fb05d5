"""The inference interface has one home below its two users: importing it loads neither the closed loop
(`world_modality.evaluate`) nor the policy server (`world_modality.serve`), and the server loads no closed loop."""

import json
import subprocess
import sys

import pytest

INFERENCE = [
    "world_modality.inference.arm",
    "world_modality.inference.episode",
    "world_modality.inference.external",
    "world_modality.inference.remote",
    "world_modality.inference.runner",
    "world_modality.inference.schedule",
    "world_modality.inference.wire",
]


def loaded_by(modules: list[str]) -> list[str]:
    """The package's modules a fresh interpreter holds after importing `modules`."""
    code = "\n".join(
        [
            "import importlib, json, sys",
            f"for m in {modules!r}: importlib.import_module(m)",
            "print(json.dumps(sorted(sys.modules)))",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [m for m in json.loads(done.stdout.splitlines()[-1]) if m.startswith("world_modality.")]


def test_every_inference_module_is_named_here():
    import pkgutil

    import world_modality.inference as package

    found = {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
    assert {m for m in found if not m.rsplit(".", 1)[1].startswith("test_")} == set(INFERENCE)


@pytest.mark.parametrize(
    "modules, kept_out",
    [
        (INFERENCE, ("world_modality.evaluate", "world_modality.serve")),
        (["world_modality.serve.server", "world_modality.serve.batched"], ("world_modality.evaluate",)),
    ],
    ids=["inference", "serve"],
)
def test_the_interface_loads_neither_of_its_users(modules, kept_out):
    loaded = loaded_by(modules)
    assert set(modules) <= set(loaded)  # the check saw the modules it names
    assert [m for m in loaded if m.startswith(tuple(f"{k}." for k in kept_out)) or m in kept_out] == []
