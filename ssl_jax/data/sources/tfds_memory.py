"""A prepared TFDS split held in host RAM as encoded bytes, decoded per example in the graph.

Memory: the encoded images stay in host RAM, on every host, about the size of the split's
prepared files (cifar10 ~130 MB, imagenette ~1.5 GB, imagenet2012 train ~150 GB), and about
twice that while loading. get_source takes this path for TFRecord-prepared data up to
`config.data_ram_limit_gb`; array_record-prepared data is read by index from disk instead
(tfds_random_access.py).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from ssl_jax.data.sources.base import Source, array_reader, bytes_reader
from ssl_jax.data.sources.tfds_common import TfdsSplit
from ssl_jax.errors import UserError


def tfds_source(opened: TfdsSplit, file_names: bool = False) -> Source:
    """The whole split read once (TFDS's as_dataset), held in memory, decoded per example.

    Args:
        opened: the split (tfds_common.open_split).
        file_names: also keep the `file_name` feature, where the dataset has one.
    """
    image_key, label_key = opened.image_key, opened.label_key
    ds = opened.builder.as_dataset(
        split=opened.split, decoders={image_key: tfds.decode.SkipDecoding()}, shuffle_files=False
    )
    # File names (imagenet2012's "n01440764_10026.JPEG") cost memory: kept only when asked for.
    name_key = opened.name_key if file_names else None
    ds = ds.map(
        lambda ex: (
            (ex[image_key], ex[label_key] if label_key else tf.constant(-1, tf.int64))
            + ((ex[name_key],) if name_key else ())
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    logging.info("Loading TFDS %s into memory (encoded bytes)", opened.source_name)
    # Batching amortises the per-element cost of iteration; decoded arrays may differ in size.
    encoded = ds.element_spec[0].dtype == tf.string
    batches = ds.batch(4096) if encoded else ds.map(lambda *xs: tuple(x[None] for x in xs))
    images, labels, names = [], [np.zeros([0], np.int32)], []
    for image_batch, label_batch, *name_batch in batches.prefetch(2).as_numpy_iterator():
        images.extend(image_batch)
        labels.append(label_batch.astype(np.int32))
        if name_key:
            names.extend(n.decode("utf-8", "replace") for n in name_batch[0])
    labels = np.concatenate(labels)
    if not images:
        raise UserError(f"TFDS dataset {opened.name!r} split {opened.split!r} is empty")
    if isinstance(images[0], bytes):
        reader = bytes_reader(images, labels, jpeg_only=False)
    else:
        # Some mocks and custom builders hand back decoded arrays despite SkipDecoding.
        reader = array_reader(np.stack(images), labels)
    return Source(
        name=opened.source_name,
        num_examples=len(images),
        num_classes=len(opened.class_names),
        class_names=opened.class_names,
        skipped=0,
        reader=reader,
        labels=labels,
        file_names=tuple(names) if name_key else None,
    )
