"""The workdir every command writes: created and proven writable first, config.json kept.

Pretraining (train.py) and evaluation (evaluate/protocols.py) share this contract: a workdir is
checked before any work starts, and a rerun with a different config keeps the earlier config
beside the new one instead of overwriting it. A workdir may be local or on gs:// (fileio).
"""

import os
import time

from absl import logging

from ssl_jax import fileio
from ssl_jax.errors import UserError


def prepare(workdir: str) -> None:
    """Create the workdir and prove it is writable, before any work starts."""
    try:
        fileio.makedirs(workdir)
        probe = fileio.join(workdir, f".write_test_{os.getpid()}")
        fileio.write_text(probe, "ok")
        fileio.remove_tree(probe)
    except Exception as e:  # OSError locally; each remote filesystem raises its own errors
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        reason = " ".join(str(reason).split())  # TF's GCS errors span lines: keep one
        raise UserError(
            f"workdir {workdir!r} cannot be created or written ({reason}); "
            "pass a writable --workdir"
        ) from None


def write_config(config, workdir: str) -> None:
    """config.json holds the resolved config; a different earlier one is kept beside it."""
    path = fileio.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if fileio.exists(path):
        old = fileio.read_text(path)
        if old != text:
            aside = fileio.join(workdir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
            fileio.write_text(aside, old)
            logging.warning("The config differs from the run's earlier one; kept that as %s", aside)
    fileio.write_text(path, text)
