"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402

import ssl_jax  # noqa: E402, F401  (before any device use: adds the CPU convolution flag)

# tf.data is only the input pipeline; keep TF off any accelerator and modest on threads.
tf.config.set_visible_devices([], "GPU")
# Tests compile many small programs and run each once or twice: compile time dominates.
jax.config.update("jax_disable_most_optimizations", True)
assert jax.device_count() == 8, jax.devices()
