"""No code path may unpickle data or run code fetched with a model.

Checkpoints, latent caches and datasets are files a researcher downloads or receives; loading one
must never execute code. The scan walks the syntax tree of every .py file of the package, bench/
and scripts/, so the names below in comments or strings (this file's own) do not count.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("world_modality", "bench", "scripts", "tests")

# module -> functions that deserialise with pickle (or can).
PICKLE_CALLS = {
    "pickle": {"load", "loads", "Unpickler"},
    "cPickle": {"load", "loads", "Unpickler"},
    "_pickle": {"load", "loads", "Unpickler"},
    "dill": {"load", "loads", "Unpickler"},
    "cloudpickle": {"load", "loads"},
    "joblib": {"load"},
    "shelve": {"open"},
    "pandas": {"read_pickle"},
}


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


class _Scanner(ast.NodeVisitor):
    def __init__(self):
        self.aliases: dict[str, str] = {}  # local name -> "module" or "module.function"
        self.hits: list[tuple[int, str]] = []

    def visit_Import(self, node):
        for a in node.names:
            self.aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            if a.name.split(".")[0] in ("dill", "cloudpickle"):
                self.hits.append((node.lineno, f"imports {a.name}"))
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        mod = node.module or ""
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{mod}.{a.name}"
            if mod.split(".")[0] in ("dill", "cloudpickle"):
                self.hits.append((node.lineno, f"imports from {mod}"))
        self.generic_visit(node)

    def _resolve(self, func) -> str | None:
        name = _dotted(func)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        base = self.aliases.get(head, head)
        return f"{base}.{rest}" if rest else base

    def visit_Call(self, node):
        name = self._resolve(node.func) or ""
        mod, _, fn = name.rpartition(".")
        top = mod.split(".")[0]
        if fn in PICKLE_CALLS.get(top, ()) or fn in PICKLE_CALLS.get(mod, ()):
            self.hits.append((node.lineno, f"{name}() unpickles"))
        if name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
            self.hits.append((node.lineno, "torch.load without weights_only=True unpickles"))
        if name in ("numpy.load", "np.load") and _is_true(_keyword(node, "allow_pickle")):
            self.hits.append((node.lineno, f"{name}(allow_pickle=True) unpickles"))
        if _is_true(_keyword(node, "trust_remote_code")):
            self.hits.append((node.lineno, "trust_remote_code=True runs code shipped with a model"))
        self.generic_visit(node)

    def visit_Dict(self, node):
        # {"trust_remote_code": True, ...} passed on as **kwargs
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_true(v):
                self.hits.append((node.lineno, "trust_remote_code=True runs code shipped with a model"))
        self.generic_visit(node)


def scan_source(source: str) -> list[tuple[int, str]]:
    scanner = _Scanner()
    scanner.visit(ast.parse(source))
    return sorted(scanner.hits)


def python_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        files += [p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts]
    return sorted(files)


def test_no_pickle_and_no_remote_code_anywhere():
    files = python_files()
    assert len(files) > 20 and any(p.name == "checkpoint.py" for p in files)
    found = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in files for line, what in scan_source(p.read_text())]
    assert not found, "unsafe deserialisation or remote code:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\npickle.load(open('f', 'rb'))",
        "import pickle as pk\nx = pk.loads(b'')",
        "from pickle import loads\nloads(b'')",
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import joblib\njoblib.load('m.joblib')",
        "import dill",
        "from transformers import AutoModel\nAutoModel.from_pretrained('p', trust_remote_code=True)",
        "kwargs = {'trust_remote_code': True}",
        "import pandas as pd\npd.read_pickle('f')",
    ],
)
def test_the_scan_catches_each_pattern(source):
    assert scan_source(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "import numpy as np\nnp.load('a.npy')",
        "import numpy as np\nnp.load('a.npy', allow_pickle=False)",
        "# pickle.load(f) in a comment\ns = 'torch.load(p) trust_remote_code=True'",
        "from safetensors.torch import load_file\nload_file('m.safetensors')",
        "AutoModel.from_pretrained('p', trust_remote_code=False)",
    ],
)
def test_the_scan_passes_safe_code(source):
    assert scan_source(source) == []
