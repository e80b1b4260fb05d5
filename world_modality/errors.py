"""How a command reports bad input: one line `prog: error: message` and exit status 2, as argparse does; and a run
that ended without finishing its work (`RunFailed`): one line naming why, and exit status 1."""

from __future__ import annotations

import os
import sys

# Bad input, not a bug: every input check in the package raises a ValueError subclass (ConfigError,
# DatasetError, AnnotationError, CheckpointError, LatentCacheMismatch) or FileNotFoundError.
USER_ERRORS = (ValueError, FileNotFoundError)


class RunFailed(RuntimeError):
    """A run that stopped with its work unfinished for a reason its message names, with what was kept and how to
    go on (attempts that raised in a simulator worker, say): not bad input, and not a bug."""


def run_reporting_errors(prog: str, func, *args) -> int:
    """Run a command; a bad input prints one line `prog: error: message` and exits 2, as argparse does; a
    `RunFailed` prints its one line and exits 1."""
    try:
        return func(*args)
    except (*USER_ERRORS, RunFailed) as e:
        # A ValueError from deep inside a library can be a bug rather than bad input: keep the trace one variable away.
        if os.environ.get("WORLD_MODALITY_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, RunFailed) else 2
