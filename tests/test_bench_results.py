"""bench/results/*.json: every figure is measured, or named as derived with a formula beside it that reproduces it.

A figure whose name says derived, projected, steady-state or estimated needs an entry in the file's "derived" dict
(bench/_common.py undeclared_derived, also enforced when a benchmark writes its results); each top-level formula is
an arithmetic expression over the file's other figures and must give the stored number (up to rounding).
"""

import ast
import importlib.util
import json
import operator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "bench" / "results").glob("*.json"))
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _common():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def evaluate(formula: str, figures: dict) -> float:
    """+ - * / over numbers and the names of numeric top-level figures; anything else is refused."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and isinstance(figures.get(node.id), (int, float)):
            return figures[node.id]
        raise ValueError(f"{formula!r}: {ast.dump(node)} is not a number, a numeric figure or + - * /")

    return ev(ast.parse(formula, mode="eval"))


def test_there_are_results():
    assert {p.name for p in RESULTS} >= {"encode.json", "eval_throughput.json", "inference.json", "training.json"}


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_derived_figures_are_named_and_have_formulas(path):
    data = json.loads(path.read_text())
    assert _common().undeclared_derived(data) == []
    for key, formula in (data.get("derived") or {}).items():
        assert isinstance(formula, str) and formula.strip(), key
        if "." in key:  # a nested figure: the formula describes it in words
            continue
        assert "derived" in key, f"{key} has a formula in 'derived' but its name does not say derived"
        assert evaluate(formula, data) == pytest.approx(data[key], rel=0.01), f"{path.name}: {key} = {formula}"
        assert (data.get("derived_assumptions") or {}).get(key), f"{path.name}: {key} says not what it assumes"


def test_known_projections_are_labelled():
    enc = json.loads((ROOT / "bench" / "results" / "encode.json").read_text())
    # The multi-epoch ratio is epochs x the one-epoch ratio: never under an unqualified or measured-looking name.
    assert "ratio_cache_vs_naive" not in enc and f"ratio_cache_vs_naive_{enc['epochs']}_epochs" not in enc
    assert enc[f"ratio_cache_vs_naive_{enc['epochs']}_epochs_derived"] == pytest.approx(
        enc["epochs"] * enc["ratio_cache_vs_naive_one_epoch"], rel=0.01
    )
    thr = json.loads((ROOT / "bench" / "results" / "eval_throughput.json").read_text())
    assert not [k for k in thr if "steady" in k and not k.endswith("_derived")]
    inf = json.loads((ROOT / "bench" / "results" / "inference.json").read_text())
    assert not [k for k in inf if k.startswith("actions_per_s") and not k.endswith("_derived")]
    for data in (enc, thr, inf):
        assert data["relabelled"]["renamed"]  # relabelled after the run, not rerun: said so in the file


def test_the_checker_catches_what_it_should():
    check = _common().undeclared_derived
    assert check({"ratio_steady_state": 6.3}) == ["ratio_steady_state: no formula in 'derived'"]
    assert check({"fps_projected": 1.0, "derived": {"fps_projected": " "}}) == [
        "fps_projected: no formula in 'derived'"
    ]
    assert check({"split": {"head_estimate": 1.0}}) == ["split.head_estimate: no formula in 'derived'"]
    assert check({"x_derived": 2.0, "y": 1.0, "derived": {"x_derived": "2 * y"}}) == []
    assert check({"derived": {"gone": "1"}, "derived_assumptions": {"gone2": "a"}}) == [
        "derived['gone'] names no figure",
        "derived_assumptions['gone2'] names no figure",
    ]
    with pytest.raises(ValueError, match="ratio_steady_state: no formula"):
        _common().emit("x", [], {"ratio_steady_state": 6.3}, out="/nonexistent/never-written.json")
    with pytest.raises(ValueError, match="not a number"):
        evaluate("__import__('os')", {})
