"""Errors that mean "the user asked for something we cannot do".

main.py prints these as one line and exits non-zero instead of showing a traceback, so every
message must say what was wrong and what to do about it.
"""

import contextlib
import sys


class UserError(Exception):
    """Bad input: config, dataset, workdir or batch size. Raised before any work starts."""


class NonFiniteLossError(Exception):
    """Training produced a NaN or Inf loss; the run stops and keeps its last good checkpoint."""


# Exit status per error kind, shared by every command-line entry point.
EXIT_STATUS = {UserError: 2, NonFiniteLossError: 3}


@contextlib.contextmanager
def exit_on_error():
    """Turn the errors above into one `error:` line on stderr and their exit status."""
    try:
        yield
    except tuple(EXIT_STATUS) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_STATUS[type(e)])
