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


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (disk full, no permission); the previous one is kept."""


class Preempted(Exception):
    """SIGTERM arrived: a checkpoint was saved at a step boundary and the run stopped early.

    Not a failure, but not a finished run either: rerunning the same command resumes.
    """


# 75 is EX_TEMPFAIL of sysexits.h, "try again later": a scheduler or launch script must not take
# a preempted run for a finished one (0) or a broken one (other codes). launch/ re-runs on it.
PREEMPTED_EXIT_CODE = 75

# Exit status per error kind, shared by every command-line entry point.
EXIT_STATUS = {UserError: 2, NonFiniteLossError: 3, CheckpointWriteError: 4,
               Preempted: PREEMPTED_EXIT_CODE}  # fmt: skip
_PREFIX = {Preempted: "preempted"}  # the console line's first word; "error" for the rest


@contextlib.contextmanager
def exit_on_error():
    """Turn the errors above into one `error:` line on stderr and their exit status."""
    try:
        yield
    except tuple(EXIT_STATUS) as e:
        print(f"{_PREFIX.get(type(e), 'error')}: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_STATUS[type(e)])
