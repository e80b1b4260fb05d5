"""Suite lookup and the instruction a (perturbed) suite gives the policy: read from the installed BDDL files."""

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import pytest

from world_modality.sim.suites import (
    PRO_SUITES,
    STANDARD_SUITES,
    base_suite,
    bddl_language,
    load_task,
    task_instruction,
)

pytestmark = pytest.mark.sim

SPATIAL_0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def test_bddl_language_reads_the_language_line(tmp_path):
    f = tmp_path / "t.bddl"
    f.write_text(
        "(define (problem LIBERO_Tabletop_Manipulation)\n  (:domain robosuite)\n"
        "  ; (:language commented out)\n  (:language Lift the Bowl, then   set it down)\n"
        "  (:objects bowl - akita_black_bowl)\n)\n"
    )
    assert bddl_language(f) == "lift the bowl, then set it down"  # as LIBERO's parser: lower case, single spaces
    f.write_text("(define (problem p)\n  (:domain robosuite)\n)\n")
    assert bddl_language(f) == ""


@pytest.mark.parametrize(
    "suite, given",
    [
        ("libero_spatial_lan", "lift the black bowl between the plate and ramekin and set it on the plate"),
        (
            "libero_spatial_task",
            "pick the akita black bowl not between the plate and the ramekin and place it on the plate",
        ),
    ],
)
def test_language_and_task_perturbations_give_the_perturbed_instruction(suite, given):
    task, _, bddl = load_task(suite, 0)
    assert task.language == SPATIAL_0  # the registry's instruction comes from the unchanged file name
    assert task_instruction(suite, 0) == (given, SPATIAL_0)
    assert bddl_language(bddl) == given


@pytest.mark.parametrize("suite", ["libero_spatial", "libero_spatial_swap", "libero_spatial_object"])
def test_other_suites_give_the_file_name_instruction(suite):
    assert task_instruction(suite, 0) == (SPATIAL_0, SPATIAL_0)


@pytest.mark.parametrize("suite", STANDARD_SUITES[:4] + PRO_SUITES)
def test_every_task_of_every_pro_suite(suite):
    # Read from the installed files: `_lan` and `_task` rewrite every task's language; `_object` and `_swap`
    # keep it, and so does every standard suite (against itself).
    base = base_suite(suite)
    for task_id in range(10):
        task, _, bddl = load_task(suite, task_id)
        base_task, _, base_bddl = load_task(base, task_id)
        given, base_instruction = task_instruction(suite, task_id)
        assert task.name == base_task.name and base_instruction == base_task.language
        if suite.endswith(("_lan", "_task")):
            assert bddl_language(bddl) != bddl_language(base_bddl)
            assert given == bddl_language(bddl) != base_instruction
        else:
            assert bddl_language(bddl) == bddl_language(base_bddl)
            assert given == base_instruction == task.language


def test_unknown_suite_and_task_are_refused():
    with pytest.raises(ValueError, match="Unknown LIBERO suite"):
        task_instruction("libero_spatial_typo", 0)
    with pytest.raises(ValueError, match=r"task_id must be in \[0, 9\]"):
        task_instruction("libero_spatial_lan", 10)
