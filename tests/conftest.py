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

# `pytest -n 2 --dist loadfile` hands out whole files. xdist's default order (most tests first)
# left the files of few, long tests (command-line runs, minutes each) for the end, where one
# worker finished them while the other sat idle. Longest first instead (measured on 2 cores),
# the rest alphabetical, so both workers finish together.
SLOW_FILES_FIRST = (
    "test_train.py",
    "test_mocov2.py",
    "test_byol.py",
    "test_supervised.py",
    "test_distill.py",
    "test_dino.py",
    "test_swav.py",
    "test_export.py",
    "test_cloud_storage.py",
    "test_mocov3.py",
    "test_cli_errors.py",
    "test_protocols.py",
    "test_parallel.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order above
        config.option.loadscopereorder = False
