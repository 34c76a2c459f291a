"""A TFDS split prepared as array_record, read by example index from disk (tfds.data_source).

Nothing is loaded up front: each host reads only the records of its own rows, one batch of
indices per call. The pipeline's batched hook (base.Source.fetch / decode) does

    fetch(indices [n])   one tf.numpy_function: array_record reads the n serialized
                         tf.train.Examples (builder.as_data_source(deserialize_method=RAW_BYTES)),
                         tf.io.parse_example picks the encoded image and the label out of them
                         -> (encoded bytes [n], label int32 [n])
    decode(bytes, label) per example in the graph: base.decode_rgb, then the augmentations

so an example's image is the same bytes, decoded by the same op, as the in-memory path's
(tfds_memory.py): same order, same augmentations, same batches. No Python decodes an image.

Labels (and file names) are not read up front either: they live inside the records. With
`file_names` they are read with the names in one pass over the records at start; otherwise the
labels are read on first use of `Source.labels` (labelled subsets, label_fraction < 1).

Prepare a dataset this way with `tfds build NAME --file_format=array_record --data_dir=DIR`
(`--overwrite` to replace a TFRecord preparation of the same version: tfds build otherwise
reuses it as it is).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from ssl_jax.data.sources.base import Source, batched_reader, decode_rgb
from ssl_jax.data.sources.tfds_common import TfdsSplit
from ssl_jax.errors import UserError

_SCAN_BATCH = 4096  # records per call when reading every label


class _LazyLabelsSource(Source):
    """A Source whose `labels` are read on first use (a pass over its records), not at start.

    `labels` is a dataclass field of Source; this property stands in for it (the generated
    __init__ goes through its setter), so subsets see an array. `_read_labels` (int64 indices
    [M] of this source -> int32 labels [M]) reads them; `take` hands a subset its own reader, so
    an evaluation on spaced examples (Source.take) reads no labels at all.
    """

    @property
    def labels(self) -> np.ndarray | None:
        state = self.__dict__
        if state.get("_labels") is None and state.get("_read_labels") is not None:
            state["_labels"] = state.pop("_read_labels")(np.arange(self.num_examples))
        return state.get("_labels")

    @labels.setter
    def labels(self, value: np.ndarray | None) -> None:
        self.__dict__["_labels"] = value

    def take(self, ids: np.ndarray, name: str) -> Source:
        read = self.__dict__.pop("_read_labels", None)
        try:  # without a reader, Source.take sees labels None and reads none
            subset = super().take(ids, name)
        finally:
            if read is not None:
                self.__dict__["_read_labels"] = read
        if read is not None:
            ids = np.asarray(ids, np.int64)
            subset.__dict__["_read_labels"] = lambda indices: read(ids[indices])
        return subset


def random_access_source(opened: TfdsSplit, file_names: bool = False) -> Source:
    """The split as a Source that reads records by index on demand (see the module docstring).

    Args:
        opened: an array_record-prepared split (tfds_common.open_split, random_access(...)).
        file_names: also read every example's `file_name` feature (one pass over the records),
            where the dataset has one.
    """
    records = opened.builder.as_data_source(
        split=opened.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
    )
    num_examples = len(records)
    if not num_examples:
        raise UserError(f"TFDS dataset {opened.name!r} split {opened.split!r} is empty")
    spec = opened.builder.info.features.tf_example_spec  # flat feature name -> tf.io spec
    image_key, label_key = opened.image_key, opened.label_key
    name_key = opened.name_key if file_names else None

    def serialized(indices: np.ndarray) -> np.ndarray:
        """Serialized tf.train.Examples of `indices` (int64 [n]) -> bytes object [n]."""
        out = np.empty(len(indices), dtype=object)
        out[:] = records.__getitems__(indices.tolist()) if len(indices) else []
        return out

    def read_serialized(indices: tf.Tensor) -> tf.Tensor:
        examples = tf.numpy_function(serialized, [indices], tf.string, stateful=False)
        examples.set_shape([None])
        return examples

    def parse(examples: tf.Tensor, keys: Sequence[str]) -> dict[str, tf.Tensor]:
        return tf.io.parse_example(examples, {k: spec[k] for k in keys})

    def fetch(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """int64 indices [n] -> (encoded image bytes [n], label int32 [n], -1 unlabeled)."""
        features = parse(read_serialized(indices), [image_key] + ([label_key] if label_key else []))
        images = features[image_key]  # [n] string
        if label_key:
            labels = tf.cast(features[label_key], tf.int32)  # [n]
        else:
            labels = tf.fill(tf.shape(images), tf.constant(-1, tf.int32))
        return images, labels

    def decode(contents: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # decode_rgb, as tfds_memory's bytes_reader: identical pixels from both paths.
        return decode_rgb(contents), label

    def read_features(keys: Sequence[str], indices: np.ndarray) -> dict[str, np.ndarray]:
        """Features `keys` of the records `indices` (int64 [M]), in that order."""
        logging.info("Reading %s of %d records of %s", keys, len(indices), opened.source_name)
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64)).batch(_SCAN_BATCH)
        ds = ds.map(
            lambda indices: parse(read_serialized(indices), keys),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        parts = list(ds.prefetch(2).as_numpy_iterator())
        return {k: np.concatenate([p[k] for p in parts] or [np.zeros([0])]) for k in keys}

    def read_labels(indices: np.ndarray) -> np.ndarray:
        if not label_key:
            return np.full(len(indices), -1, np.int32)
        return read_features([label_key], indices)[label_key].astype(np.int32)

    names = labels = None
    if name_key:
        every = np.arange(num_examples)
        found = read_features([name_key] + ([label_key] if label_key else []), every)
        names = tuple(n.decode("utf-8", "replace") for n in found[name_key])
        labels = found[label_key].astype(np.int32) if label_key else read_labels(every)
    source = _LazyLabelsSource(
        name=opened.source_name,
        num_examples=num_examples,
        num_classes=len(opened.class_names),
        class_names=opened.class_names,
        skipped=0,
        reader=batched_reader(fetch, decode),
        labels=labels,
        file_names=names,
        fetch=fetch,
        decode=decode,
    )
    if labels is None:
        source.__dict__["_read_labels"] = read_labels
    logging.info(
        "TFDS %s: %d records read by index from array_record (not loaded into memory)",
        opened.source_name,
        num_examples,
    )
    return source
