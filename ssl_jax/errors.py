"""Errors that mean "the user asked for something we cannot do".

main.py prints these as one line and exits non-zero instead of showing a traceback, so every
message must say what was wrong and what to do about it.
"""


class UserError(Exception):
    """Bad input: config, dataset, workdir or batch size. Raised before any work starts."""


class NonFiniteLossError(Exception):
    """Training produced a NaN or Inf loss; the run stops and keeps its last good checkpoint."""
