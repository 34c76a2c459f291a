"""JAX's persistent compilation cache, so a restarted run does not compile its step again.

A preempted pod slice restarts the same program on the same hardware; with the compiled
executables on disk (by default in the workdir, which every host of a run shares) the restart
loads them instead of recompiling, which takes minutes for a large model on a pod.
"""

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from ssl_jax import fileio

OFF = "off"
_set_by_us = None  # the directory this module last set, to tell it from a user's own setting


def use(setting: str, workdir: str) -> str | None:
    """Points JAX's persistent compilation cache at the directory `setting` names.

    Args:
        setting: config.compilation_cache_dir: "" for <workdir>/compilation_cache, a path, or
            "off". A cache directory the user set for JAX itself (JAX_COMPILATION_CACHE_DIR)
            wins over "".
        workdir: the run's workdir.

    Returns:
        The directory in use, or None when the cache is off.
    """
    global _set_by_us
    current = jax.config.jax_compilation_cache_dir
    if setting == OFF:
        if current and current == _set_by_us:  # an earlier run in this process turned it on
            jax.config.update("jax_compilation_cache_dir", None)
            jax_cache.reset_cache()
            _set_by_us = None
        return None
    if not setting and current and current != _set_by_us:
        return current  # the user's own JAX setting
    directory = setting or fileio.join(workdir, "compilation_cache")
    if current != directory:
        if current:
            # A second run in the same process (tests, a notebook): JAX opens its cache once, at
            # the first compile, so it must be told to open the new directory.
            jax_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", directory)
        logging.info("Persistent compilation cache: %s", directory)
    _set_by_us = directory
    return directory
