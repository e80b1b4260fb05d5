"""How a command reports bad input: one line `prog: error: message` and exit status 2, as argparse does."""

from __future__ import annotations

import os
import sys

# Bad input, not a bug: every input check in the package raises a ValueError subclass (ConfigError,
# DatasetError, AnnotationError, CheckpointError, LatentCacheMismatch) or FileNotFoundError.
USER_ERRORS = (ValueError, FileNotFoundError)


def run_reporting_errors(prog: str, func, *args) -> int:
    """Run a command; a bad input prints one line `prog: error: message` and exits 2, as argparse does."""
    try:
        return func(*args)
    except USER_ERRORS as e:
        # A ValueError from deep inside a library can be a bug rather than bad input: keep the trace one variable away.
        if os.environ.get("WORLD_MODALITY_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
