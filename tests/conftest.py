"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, the command-line runs the tests start
# included: the same tiny programs (a runlocal train step, the initialiser, orbax's slices) are
# otherwise compiled again by every process. Keyed by program, jaxlib and flags, so sharing is safe.
# No size limit: jax's eviction needs the optional filelock package (without it, no cache at all).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ssl_jax_tests_jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402

import ssl_jax  # noqa: E402, F401  (before any device use: adds the CPU convolution flag)

# tf.data is only the input pipeline; keep TF off any accelerator and modest on threads.
tf.config.set_visible_devices([], "GPU")
# Tests compile many small programs and run each once or twice: compile time dominates.
jax.config.update("jax_disable_most_optimizations", True)
assert jax.device_count() == 8, jax.devices()
