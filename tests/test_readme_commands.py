"""Every fenced shell command of README.md works as typed, in a new shell, right after `make test` or `make demo`.

The README's ```bash blocks are parsed into commands (backslash continuations joined, comments dropped). Each one
is covered in one of two ways:

- run: in a fresh `bash -c` without the project's environment on PATH (no VIRTUAL_ENV, no .venv/bin), prefixed
  only with the README's own way to enter it (the `source ...` sentence under "## Two commands"), from a folder
  that looks like the repository (its files linked, a fresh `runs/`), with the placeholders DATA and DIR standing
  for a fixture-sized dataset and flags that shrink the run added where the command does not set them itself;
- or, for a command too expensive to run here (real weights, the full generation, `make test`/`make demo`): its
  program's `--help` works in such a shell (`make -n` for make).

Independently of how it is covered, every command's arguments go through its program's own parser, which must
leave nothing unknown: a README flag the program does not accept, or a subcommand that does not exist, fails
here before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"

# The README's stand-ins for the user's own paths; each becomes a copy of the fixture dataset.
PLACEHOLDERS = ("DATA", "DIR")
# `python -m MODULE` and `world-modality SUBCOMMAND` name the same programs.
MODULE_PROGRAMS = {"world_modality.train": "train", "world_modality.eval_libero": "eval"}
# Flags that shrink a run to fixture size, added only where the README command does not set the flag itself.
SHRINK_FLAGS = {
    "train": {"--image_size": "32", "--world_image_size": "32", "--max_epochs": "1", "--tensorboard": False},
    "encode": {"--world_image_size": "32"},
    "pretrain-world": {"--steps": "4", "--batch_size": "4", "--image_size": "32", "--world_image_size": "32"},
    "eval": {"--tasks": "0", "--n_episodes": "1", "--max_steps": "8", "--workers": "1"},
}
# The launcher's settings that shrink it likewise (environment variables the README command does not set).
SHRINK_LAUNCHER = {
    "EXPERIMENTS": "E2",
    "TASKS": "0",
    "N_EPISODES": "1",
    "WORKERS": "1",
    "MAX_EPOCHS": "1",
    "TRAIN_ARGS": "--image_size 32 --world_image_size 32 --no-tensorboard",
    "EVAL_ARGS": "--max_steps 8",
}
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)


@dataclass
class Command:
    line: int  # README line where the command starts
    env: dict[str, str]  # leading NAME=value assignments
    argv: list[str]

    def __str__(self) -> str:
        return f"README.md:{self.line}: {shell_join(self.argv, self.env)}"

    @property
    def program(self) -> str:
        """`make`, `launcher`, or the program's name: `train`, `eval`, `encode`, ..."""
        a = self.argv
        if a[0] == "make":
            return "make"
        if a[0].endswith(".sh"):
            return "launcher"
        if a[0] in ("python", "python3") and a[1:2] == ["-m"] and len(a) > 2:
            return MODULE_PROGRAMS.get(a[2], a[2])
        if a[0] == "world-modality":
            return a[1] if len(a) > 1 and not a[1].startswith("-") else "world-modality"
        raise AssertionError(f"{self}: unknown program {a[0]!r}; teach tests/test_readme_commands.py to check it")

    def flags(self) -> set[str]:
        return {a.split("=", 1)[0] for a in self.argv if a.startswith("--")}

    def value(self, flag: str) -> str | None:
        for i, a in enumerate(self.argv):
            if a == flag and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
        return None

    def help_argv(self) -> list[str]:
        """The program of this command asked for its help (make: a dry run of the same targets)."""
        if self.program == "make":
            return ["make", "-n", *self.argv[1:]]
        n = 3 if self.argv[0].startswith("python") else 2 if self.argv[0] == "world-modality" else 1
        return [*self.argv[:n], "--help"]

    def too_expensive(self) -> str | None:
        """Why this command is not run here, or None."""
        if self.program == "make":
            return "make test runs the whole suite and make demo takes minutes"
        if self.flags() & {"--backbone_path", "--world_encoder_path"}:
            return "it loads real weights from a local folder or the hub cache"
        if self.program == "generate":
            return "the full generation runs the simulator's scripted expert for minutes"
        if self.program == "study":
            return "a study generates, trains and evaluates whole suites for hours (its fixture-sized run is tested)"
        if "--arm" in self.flags() or any(a.startswith("runs/arms/") for a in self.argv):
            return "an external arm needs the user's policy server (stand-in servers: evaluate/test_external_arm.py)"
        if self.program == "probe":
            return "it needs a generated dataset's observation.environment_state, which the fixture lacks"
        return None


def shell_join(argv: list[str], env: dict[str, str] | None = None) -> str:
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()), *map(shlex.quote, argv)])


def readme_commands(text: str | None = None, fences: tuple[str, ...] = ("bash", "sh", "shell")) -> list[Command]:
    """The commands of the README's code blocks of these languages (its shell blocks), in order."""
    commands: list[Command] = []
    fence, shell, pending, start = False, False, None, 0
    for no, line in enumerate((README.read_text() if text is None else text).splitlines(), 1):
        s = line.strip()
        if s.startswith("```"):
            assert pending is None, f"README.md:{no}: a code block ends inside a continued command"
            fence, shell = (False, False) if fence else (True, s[3:].strip() in fences)
            continue
        if not shell or (pending is None and (not s or s.startswith("#"))):
            continue
        if pending is None:
            start, pending = no, ""
        if s.endswith("\\"):
            pending += s[:-1] + " "
            continue
        tokens, pending = shlex.split(pending + s, comments=True), None
        env = {}
        while tokens and (m := _ASSIGNMENT.fullmatch(tokens[0])):
            env[m[1]] = m[2]
            tokens.pop(0)
        if tokens:
            commands.append(Command(start, env, tokens))
    return commands


def inline_commands(text: str | None = None) -> list[Command]:
    """Whole commands quoted in the README's prose (`make demo QUICK=1`, `python -m ... --help`)."""
    found = []
    for no, line in enumerate((README.read_text() if text is None else text).splitlines(), 1):
        for m in re.finditer(r"`((?:make|python -m|world-modality) [^`]+)`", line):
            found.append(Command(no, {}, shlex.split(m[1])))
    return found


COMMANDS = readme_commands()
# Shown, not run: the project's commands in ```text blocks (a cluster's, or needing weights or a user's server).
SHOWN = [c for c in readme_commands(fences=("text",)) if c.argv[0] == "world-modality"]


def activation_command() -> str:
    """The README's one way to enter the environment: an inline `source ...` under "## Two commands"."""
    text = README.read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"`((?:source|\.) [^`]+)`", section)
    assert len(found) == 1, (
        "README.md must say once, under '## Two commands', how to enter the environment in a new "
        f"shell (an inline `source .venv/bin/activate`); found {found}"
    )
    return found[0]


def fresh_env(**extra: str) -> dict[str, str]:
    """A new shell's environment: no virtual environment active, nothing of the project's on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "PYTHONHOME", "PYTHONPATH", "PY")
    }
    keep = [
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if p and not (Path(p) / "world-modality").exists() and Path(p).resolve() != VENV_BIN.resolve()
    ]
    env["PATH"] = os.pathsep.join(keep)
    env.update(extra)
    return env


def _run(script: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


# --- every command's arguments through its program's own parser (fast) --------------------------------------


class _Parsed(BaseException):
    """Raised in place of running the program once its parser has read the arguments."""


def parse_with_program(cmd: Command) -> None:
    """The command's arguments through the parser of the program it names; fails on anything left unknown."""
    if cmd.argv[0] == "world-modality":
        (ep,) = importlib.metadata.entry_points(group="console_scripts", name="world-modality")
        main, args = ep.load(), cmd.argv[1:]
    else:
        main, args = importlib.import_module(cmd.argv[2]).main, cmd.argv[3:]
    unknown: list[list[str]] = []

    def parse_args(self, args=None, namespace=None):
        ns, extra = self.parse_known_args(args, namespace)
        unknown.append(extra)
        raise _Parsed

    err = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()) as out,
    ):
        try:
            main(args)
        except _Parsed:
            pass
        except SystemExit as e:
            if e.code in (0, None) and "--help" in args and out.getvalue().startswith("usage:"):
                return
            pytest.fail(f"{cmd}\nits program rejects it (exit {e.code}): {err.getvalue().strip()}")
    if not unknown:
        pytest.fail(f"{cmd}: its program never parsed its arguments")
    if unknown != [[]]:
        pytest.fail(f"{cmd}\nits program does not accept {unknown[0]}")


def test_readme_commands_are_found():
    # Guards the parser above: the README's blocks are read at all (a changed fence would silently find nothing).
    assert len(COMMANDS) >= 5 and {"make", "train"} <= {c.program for c in COMMANDS}, COMMANDS


def _test_id(cmd: Command) -> str:
    try:
        return f"line{cmd.line}-{cmd.program}"
    except AssertionError:  # an unknown program fails in the test, not at collection
        return f"line{cmd.line}-{cmd.argv[0]}"


@pytest.mark.parametrize("cmd", COMMANDS + inline_commands(), ids=_test_id)
def test_readme_command_is_accepted_by_its_program(cmd):
    if cmd.program == "make":
        proc = _run(shell_join(["make", "-n", *cmd.argv[1:]]), ROOT, fresh_env(), timeout=60)
        assert proc.returncode == 0, f"{cmd}\n{_tail(proc)}"
    elif cmd.program == "launcher":
        script = ROOT / cmd.argv[0]
        assert script.is_file() and os.access(script, os.X_OK), f"{cmd}: {script} is not an executable file"
        assert len(cmd.argv) == 1, f"{cmd}: the launcher takes no arguments, only environment variables"
        source = script.read_text()
        for name in cmd.env:
            assert re.search(rf"\${{{name}[:}}-]", source), f"{cmd}: the launcher has no setting {name}"
    else:
        parse_with_program(cmd)


@pytest.mark.parametrize("cmd", SHOWN, ids=_test_id)
def test_readme_commands_shown_as_text_are_accepted_by_their_program(cmd):
    parse_with_program(cmd)


def test_readme_commands_shown_as_text_are_found():
    # The shard, real-scale and external-arm examples: a changed fence would silently check nothing.
    assert sum(c.program == "study" for c in SHOWN) >= 4, SHOWN


def test_the_parser_check_catches_an_unknown_flag_and_subcommand():
    bad = readme_commands(
        "```bash\nworld-modality train --preset E2 --dataset DATA --no_such_flag 1\n"
        "python -m world_modality.train --dataset DATA \\\n    --lambda_wrld 0.2  # typo\n"
        "world-modality evaluate --checkpoint runs/e2\n```\n"
    )
    assert [c.line for c in bad] == [2, 3, 5]
    for cmd, wrong in zip(bad, ("--no_such_flag", "--lambda_wrld", "'evaluate'")):
        with pytest.raises(pytest.fail.Exception, match=wrong):
            parse_with_program(cmd)


def test_readme_says_how_to_enter_the_environment_and_that_command_works():
    activate = activation_command()
    assert (ROOT / shlex.split(activate)[1]).is_file(), f"the README's `{activate}` names no file"
    # Without it, a new shell has none of the package's commands (this is what the README sentence is for) ...
    proc = _run("command -v world-modality", ROOT, fresh_env(), timeout=60)
    assert proc.returncode != 0, f"the test's fresh shell already finds world-modality: {proc.stdout}"
    # ... with it, the README's programs are there.
    proc = _run(
        f"{activate} && command -v world-modality && python -c 'import pyarrow, world_modality'",
        ROOT,
        fresh_env(),
        timeout=120,
    )
    assert proc.returncode == 0, _tail(proc)
    assert proc.stdout.strip() == str(VENV_BIN / "world-modality"), proc.stdout


# --- every command run as typed, or its program's help (slow) -------------------------------------------------


def shrunk(cmd: Command, data: Path) -> tuple[str, dict[str, str]]:
    """The command as a shell line with its placeholders filled in and fixture-sized flags added; extra env."""

    def fill(s: str) -> str:
        return re.sub(rf"\b({'|'.join(PLACEHOLDERS)})\b", str(data), s)

    argv, env = [fill(a) for a in cmd.argv], {k: fill(v) for k, v in cmd.env.items()}
    extra_env = {k: v for k, v in SHRINK_LAUNCHER.items() if k not in env} if cmd.program == "launcher" else {}
    have = cmd.flags()
    for flag, value in SHRINK_FLAGS.get(cmd.program, {}).items():
        if value is False:  # a boolean flag: --no-X unless the command says --X or --no-X
            if not have & {flag, "--no-" + flag[2:]}:
                argv.append("--no-" + flag[2:])
        elif flag not in have:
            argv += [flag, value]
    if cmd.program == "eval" and "--n_episodes" in have:
        # Its own episode count stays as written; one shard of that many runs one episode per task.
        argv += ["--shard", f"0/{cmd.value('--n_episodes')}"]
    return shell_join(argv, env), extra_env


def repository_view(where: Path) -> Path:
    """A folder that looks like the repository to a command run from it (its files linked), with a fresh runs/."""
    where.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git", ".pytest_cache", "outputs"):
            (where / entry.name).symlink_to(entry)
    return where


@pytest.mark.sim
@pytest.mark.slow
def test_readme_commands_run_as_typed_in_a_new_shell(fixture_dataset, tmp_path):
    activate = activation_command()
    repo = repository_view(tmp_path / "repo")
    data = tmp_path / "data"
    shutil.copytree(fixture_dataset, data)
    covered, helped = [], set()
    for cmd in COMMANDS:
        why = cmd.too_expensive()
        if why:
            help_line = shell_join(cmd.help_argv())
            if help_line not in helped:
                proc = _run(f"{activate} && {help_line}", repo, fresh_env(), timeout=300)
                assert proc.returncode == 0, f"{cmd}\nnot run ({why}); its `{help_line}` fails:\n{_tail(proc)}"
                assert proc.stdout.strip(), f"{help_line} printed nothing"
                helped.add(help_line)
            covered.append((cmd, f"help ({why})"))
            continue
        line, extra_env = shrunk(cmd, data)
        t0 = time.monotonic()
        proc = _run(f"{activate} && {line}", repo, fresh_env(**extra_env))
        print(f"[readme] {time.monotonic() - t0:5.1f}s {cmd}")
        assert proc.returncode == 0, f"{cmd}\nran as: {line} {extra_env or ''}\n{_tail(proc)}"
        assert "Traceback" not in proc.stderr, f"{cmd}\n{_tail(proc)}"
        covered.append((cmd, "run"))
    assert [c for c, _ in covered] == COMMANDS
    assert sum(how == "run" for _, how in covered) >= len(COMMANDS) // 2, covered
    # What ran left what the README says it leaves.
    assert (repo / "runs" / "e2" / "eval" / "libero_spatial-zero" / "episodes.jsonl").is_file()
    assert (repo / "runs" / "report" / "report.html").is_file()
    assert (repo / "runs" / "fplus" / "report" / "report.md").is_file()
