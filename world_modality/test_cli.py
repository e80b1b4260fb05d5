"""The `world-modality` command line: every flag of every subcommand says what it does, and `train --help`
names every backbone; nothing of the package imports the command line."""

import argparse
import re
import subprocess
import sys

import pytest

from world_modality.cli import build_parser
from world_modality.config import BACKBONES, FIELD_HELP, FIELD_SECTION


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_is_checked():
    assert {"train", "encode", "eval-offline", "generate", "eval", "report", "pretrain-world", "probe", "demo"} <= set(
        _subcommands()
    )


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_flag_has_help_beyond_its_default(command):
    """A help string that is only "(default: ...)" says nothing of what the flag does."""
    bare = []
    for action in _subcommands()[command]._actions:
        text = re.sub(r"\(default: [^)]*\)", "", action.help or "").strip(" ;,")
        if action.help is argparse.SUPPRESS or not text:
            bare.append("/".join(action.option_strings) or action.dest)
    assert not bare, f"`world-modality {command}` flags without help: {bare}"


def test_every_config_field_has_its_help():
    assert set(FIELD_HELP) == set(FIELD_SECTION)


def test_train_help_names_every_backbone_and_the_suites_flag_says_what_it_takes():
    out = subprocess.run(
        [sys.executable, "-m", "world_modality.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert all(b in out for b in BACKBONES) and "SmolVLM" in out, out
    for command in ("eval", "generate"):
        (suite,) = [a for a in _subcommands()[command]._actions if "--suite" in a.option_strings]
        assert "libero_spatial" in suite.help and "libero_object" in suite.help


def test_task_ids_one_parser_for_every_command():
    from world_modality.config import ConfigError
    from world_modality.ids import parse_ids

    assert parse_ids("0,1,4") == [0, 1, 4] and parse_ids("0-3") == [0, 1, 2, 3] and parse_ids("0-2,5") == [0, 1, 2, 5]
    for text, needle in (
        ("3-1", "--tasks range '3-1' is empty"),
        ("1,1", "distinct task ids"),
        ("0,x", "--tasks must look like '0,1,4' or '0-9', got '0,x'"),
        ("-1", "distinct task ids"),
        ("", "distinct task ids"),
        ("1-2-3", "must look like"),
    ):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            parse_ids(text)
    with pytest.raises(ConfigError, match=r"--init-states must name distinct initial-state ids"):
        parse_ids("2,2", "--init-states", "initial-state ids")
