"""The workdir every command writes: created and proven writable first, config.json kept.

Pretraining (train.py) and evaluation (evaluate/protocols.py) share this contract: a workdir is
checked before any work starts, and a rerun with a different config keeps the earlier config
beside the new one instead of overwriting it.
"""

import os
import time

from absl import logging

from ssl_jax.errors import UserError


def prepare(workdir: str) -> None:
    """Create the workdir and prove it is writable, before any work starts."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(
            f"workdir {workdir!r} cannot be created or written ({e.strerror or e}); "
            "pass a writable --workdir"
        ) from None


def write_config(config, workdir: str) -> None:
    """config.json holds the resolved config; a different earlier one is kept beside it."""
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if old != text:
            aside = os.path.join(workdir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
            os.replace(path, aside)
            logging.warning("The config differs from the run's earlier one; kept that as %s", aside)
    with open(path, "w") as f:
        f.write(text)
