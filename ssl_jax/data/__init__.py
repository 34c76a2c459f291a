"""Data: sources (TFDS, image folder, bundled demo), TF-op augmentations and tf.data pipelines."""

import tensorflow as tf

# tf.data is only the host input pipeline: keep TF from claiming GPU memory that JAX needs. This
# fails harmlessly when TF's devices are already initialised (then the caller chose for us).
try:
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
    pass

from ssl_jax.data.augment import augment_view, eval_view  # noqa: E402
from ssl_jax.data.pipeline import eval_batches, steps_per_epoch, train_batches  # noqa: E402
from ssl_jax.data.sources import Source, get_run_source, get_source  # noqa: E402

__all__ = [
    "Source",
    "augment_view",
    "eval_batches",
    "eval_view",
    "get_run_source",
    "get_source",
    "steps_per_epoch",
    "train_batches",
]
