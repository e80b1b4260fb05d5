"""The package's layers, lowest first, and the rule every import keeps: a module imports only from its own
top-level unit or a lower layer (within a layer of several units, only from units listed before its own),
and no chain of imports leads back to where it started. Imports inside functions count: a circle closed at
call time is still a circle. README.md and docs/ARCHITECTURE.md state this order, each once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "world_modality"

# Lowest first. A unit is the first name under world_modality/ (a subpackage or a top-level module); a new one
# fails the test until it is placed here and in the two documents.
LAYERS: list[tuple[str, ...]] = [
    # foundation
    (
        "config",
        "cache_dirs",
        "jsonl",
        "images",
        "optim_state",
        "workers",
        "ids",
        "errors",
        "optim",
        "toolchain",
        "provenance",
    ),
    ("data",),
    ("world",),
    ("policy",),
    ("loader", "pipeline"),
    ("sim",),
    ("train_output", "train"),
    ("inference",),  # the policy's inference interface: below the closed loop and the server, which both use it
    ("evaluate",),
    ("analysis",),
    ("demo", "eval_libero", "study", "serve"),  # entry points
    ("commands", "cli"),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
ORDER = {unit: i for units in LAYERS for i, unit in enumerate(units)}
# How the documents write the order: one code span, layers joined by arrows.
ORDER_TEXT = "`" + " → ".join(", ".join(units) for units in LAYERS) + "`"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package except tests (test_*.py) and the root __init__."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if path.name.startswith("test_") or rel.parts == (PACKAGE, "__init__"):
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _unit(module: str) -> str:
    return module.split(".")[1]


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of the package, line) for every import statement anywhere in the file, those under
    `if TYPE_CHECKING:` included: a circle closed only through annotations makes no run-time cycle, but it shows a
    type living in the wrong file (a settings type belongs below both of its users)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from .policy import checkpoint` imports the submodule; `from .config import X` the module.
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules and name != PACKAGE:
                name = name.rpartition(".")[0]  # `import world_modality.sim.env` -> that module
            if name and name != PACKAGE and name != module:
                found.append((name, node.lineno))
    return found


def _graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, int]]]]:
    modules = _modules()
    return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_every_module_is_in_a_layer():
    modules, _ = _graph()
    missing = sorted(f"{p.relative_to(ROOT)} (unit {_unit(m)!r})" for m, p in modules.items() if _unit(m) not in RANK)
    assert not missing, (
        "modules in no layer; place their unit in LAYERS (tests/test_layers.py) and in the order "
        f"README.md and docs/ARCHITECTURE.md state: {missing}"
    )


def _upward(graph: dict[str, list[tuple[str, int]]]) -> list[tuple[str, str, int]]:
    """(module, imported module, line) of every import into a higher layer, or into a unit listed later in the
    same layer; modules in no layer are left to test_every_module_is_in_a_layer."""
    out = []
    for module, imports in graph.items():
        a = _unit(module)
        for target, line in imports:
            b = _unit(target)
            if a != b and a in RANK and b in RANK and (RANK[b], ORDER[b]) > (RANK[a], ORDER[a]):
                out.append((module, target, line))
    return out


def test_no_import_reaches_up():
    modules, graph = _graph()
    bad = [
        f"{_where(modules[m], line)}: {m} (rank {RANK[_unit(m)]}, {_unit(m)}) imports {t} "
        f"(rank {RANK[_unit(t)]}, {_unit(t)})"
        for m, t, line in _upward(graph)
    ]
    assert not bad, "imports that reach up a layer:\n" + "\n".join(bad)


def _cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _one_circle(component: list[str], graph: dict[str, list[tuple[str, int]]]) -> list[tuple[str, str, int]]:
    """A concrete circle inside a strongly connected component: (from, to, line) edges back to the start."""
    inside = set(component)
    start = component[0]
    parent: dict[str, tuple[str, int]] = {}
    frontier = [start]
    while frontier:  # breadth first from start until an edge returns to it
        nxt = []
        for v in frontier:
            for w, line in graph[v]:
                if w == start:
                    path = [(v, w, line)]
                    while v != start:
                        u, ln = parent[v]
                        path.append((u, v, ln))
                        v = u
                    return path[::-1]
                if w in inside and w not in parent and w != start:
                    parent[w] = (v, line)
                    nxt.append(w)
        frontier = nxt
    return []


def test_no_import_cycle():
    modules, graph = _graph()
    found = []
    for component in _cycles(graph):
        edges = _one_circle(component, graph)
        found.append(" -> ".join(f"{a} ({_where(modules[a], line)})" for a, _, line in edges) + f" -> {edges[0][0]}")
    assert not found, "import cycles (imports inside functions and under TYPE_CHECKING count):\n" + "\n".join(found)


def test_the_documents_state_the_layer_order_once():
    for doc in ("README.md", "docs/ARCHITECTURE.md"):
        n = (ROOT / doc).read_text().count(ORDER_TEXT)
        assert n == 1, f"{doc} states the layer order {ORDER_TEXT} {n} times; expected once (tests/test_layers.py)"


def test_the_checker_sees_a_call_time_circle_and_an_upward_import(tmp_path):
    """The checker itself: cli <-> eval_libero was a circle closed inside functions."""
    graph = {
        "world_modality.cli": [("world_modality.eval_libero", 3)],
        "world_modality.eval_libero": [("world_modality.cli", 40)],
    }
    assert _cycles(graph) == [["world_modality.cli", "world_modality.eval_libero"]]
    assert _one_circle(["world_modality.cli", "world_modality.eval_libero"], graph) == [
        ("world_modality.cli", "world_modality.eval_libero", 3),
        ("world_modality.eval_libero", "world_modality.cli", 40),
    ]
    assert _upward(graph) == [("world_modality.eval_libero", "world_modality.cli", 40)]
    # Within the foundation and the entry points, only units listed earlier: ids may use config, not the reverse.
    assert _upward(
        {
            "world_modality.ids": [("world_modality.config.checks", 5)],
            "world_modality.config.flags": [("world_modality.errors", 9)],
            "world_modality.data.lerobot": [("world_modality.config", 1), ("world_modality.world.encoder", 2)],
        }
    ) == [
        ("world_modality.config.flags", "world_modality.errors", 9),
        ("world_modality.data.lerobot", "world_modality.world.encoder", 2),
    ]
    src = tmp_path / "m.py"
    type_only = "if TYPE_CHECKING:\n    from .z import Z\n"
    src.write_text("def f():\n    from ..train import x\n    from . import y\n" + type_only)
    modules = {n: src for n in ("world_modality.policy.m", "world_modality.train", "world_modality.policy.y")}
    modules["world_modality.policy.z"] = src
    assert _imports("world_modality.policy.m", src, modules) == [
        ("world_modality.train", 2),
        ("world_modality.policy.y", 3),
        ("world_modality.policy.z", 5),
    ]
