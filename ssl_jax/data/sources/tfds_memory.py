"""A prepared TFDS split held in memory as encoded bytes, decoded per example in the graph."""

from __future__ import annotations

import unittest.mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from ssl_jax.data.sources.base import Source, array_reader, bytes_reader
from ssl_jax.errors import UserError

DATASET_HELP = (
    "use `demo` (bundled, offline), `imagefolder:PATH` (PATH/<class>/*.jpg or "
    "PATH/train/<class>/...), or a TFDS name such as cifar10, cifar100, stl10, imagenette, "
    "imagenet2012"
)


def _tfds_is_mocked() -> bool:
    # tfds.testing.mock_data serves fake examples without preparing anything on disk, so
    # is_prepared() stays False under it; it patches as_dataset with a plain function, not a Mock.
    as_dataset = tfds.core.DatasetBuilder.as_dataset
    module = getattr(as_dataset, "__module__", "") or ""
    return module.startswith("tensorflow_datasets.testing") or isinstance(
        as_dataset, unittest.mock.Mock
    )


def tfds_source(
    name: str, split: str, data_dir: str | None, file_names: bool = False
) -> Source | None:
    """A prepared TFDS split, held in memory as encoded bytes and decoded per example.

    Memory: encoded images stay in host RAM, about the size of the prepared dataset (cifar10
    ~130 MB, imagenette ~1.5 GB, imagenet2012 train ~150 GB). That is fine on TPU VM hosts for most
    datasets; for imagenet2012 on a small host use `imagefolder:PATH` (read by path) instead. A
    random-access array_record source (tfds.data_source) that reads on demand is future work.
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(f"unknown dataset {name!r}: {DATASET_HELP}") from None
    except Exception as e:  # Bad config names ("cifar10/x") and similar; keep it to one line.
        raise UserError(f"cannot open TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    mocked = _tfds_is_mocked()
    if not (mocked or builder.is_prepared()):
        where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise UserError(
            f"TFDS dataset {name!r} is not prepared in {where}; ssl_jax never downloads. "
            f"Run `tfds build {name} --data_dir=DIR` on a machine with network and set "
            "config.data_dir=DIR, or use imagefolder:PATH"
        )

    known = set(builder.info.splits.keys())
    wanted = (
        "train"
        if split == "train"
        else next((s for s in ("test", "validation") if s in known), None)
    )
    if not known and mocked:
        wanted = split  # Mocks know no split names; serve the one asked for.
    if wanted is None or (wanted not in known and not mocked):
        return None

    features = builder.info.features
    image_key = (
        "image"
        if "image" in features
        else next((k for k, f in features.items() if isinstance(f, tfds.features.Image)), None)
    )
    if image_key is None:
        raise UserError(f"TFDS dataset {name!r} has no image feature; pick an image dataset")
    has_label = "label" in features and isinstance(features["label"], tfds.features.ClassLabel)
    label_key = "label" if has_label else None
    class_names = tuple(features[label_key].names) if label_key else ()

    ds = builder.as_dataset(
        split=wanted, decoders={image_key: tfds.decode.SkipDecoding()}, shuffle_files=False
    )
    # File names (imagenet2012's "n01440764_10026.JPEG") cost memory: kept only when asked for.
    name_key = "file_name" if file_names and "file_name" in features else None
    ds = ds.map(
        lambda ex: (
            (ex[image_key], ex[label_key] if label_key else tf.constant(-1, tf.int64))
            + ((ex[name_key],) if name_key else ())
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    logging.info("Loading TFDS %s[%s] into memory (encoded bytes)", name, wanted)
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
        raise UserError(f"TFDS dataset {name!r} split {wanted!r} is empty")
    if isinstance(images[0], bytes):
        reader = bytes_reader(images, labels, jpeg_only=False)
    else:
        # Some mocks and custom builders hand back decoded arrays despite SkipDecoding.
        reader = array_reader(np.stack(images), labels)
    return Source(
        name=f"{name}:{wanted}",
        num_examples=len(images),
        num_classes=len(class_names),
        class_names=class_names,
        skipped=0,
        reader=reader,
        labels=labels,
        file_names=tuple(names) if name_key else None,
    )
