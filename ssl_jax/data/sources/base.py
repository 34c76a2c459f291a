"""What every data source is: a `Source`, random access to (image, label) by example index.

A `Source` only knows how to fetch examples by index, inside a tf.data graph; order, sharding
and augmentation live in pipeline.py. It reads in one of two ways:

    per example   `read(index)`: one example at a time (image folders, data held in memory)
    batched       `fetch(indices)` once per batch of indices (the records, still encoded), then
                  `decode(*record)` per example: for storage where one call per record costs
                  too much (tfds_random_access.py: a Python call into array_record)

The pipeline uses the batched hook when a Source has one, and both ways give the same images.
The readers here hold examples in memory; the other modules of this package build Sources from a
kind of storage each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

SPLITS = ("train", "test")

Reader = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
# int64 indices [n] -> a tuple of tensors with leading dimension n: n records, one call.
Fetcher = Callable[[tf.Tensor], tuple[tf.Tensor, ...]]
# One record (row i of every tensor a Fetcher returns) -> (image, label), as `Source.read`.
RecordDecoder = Callable[..., tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class Source:
    """One split of a dataset, addressable by example index.

    Attributes:
        name: what was loaded, e.g. "demo:train", "imagefolder:/data/x:train", "cifar10:train".
        num_examples: N; valid indices are 0..N-1.
        num_classes: C, or 0 when the split is unlabeled.
        class_names: C names; label c is class_names[c].
        skipped: corrupt or unreadable files dropped at scan time (image folders only).
        reader: graph-mode function behind `read`; build a Source with your own reader to plug in
            another storage format.
        labels: int32 [N], every example's label (-1 unlabeled), known without decoding images:
            what class-balanced labelled subsets are drawn from. None when a custom source
            cannot tell. A random-access TFDS source reads them on first use (one pass over
            the split's records), since only labelled subsets need them.
        file_names: every example's file name or path (an image folder's paths, the TFDS
            `file_name` feature such as imagenet2012's "n01440764_10026.JPEG"), what a list of
            file names (`label_subset_file`) is matched against. Only kept when asked for
            (`get_source(..., file_names=True)`); None otherwise, or when the data has none.
        fetch: optional batched read (with `decode`): int64 indices [n] -> a tuple of tensors
            of leading dimension n, the n records in one call (a tf.numpy_function, say).
            None: the pipeline reads per example with `read`.
        decode: with `fetch`: one record (row i of each of fetch's tensors) -> (image, label)
            exactly as `read(indices[i])` returns them.
    """

    name: str
    num_examples: int
    num_classes: int
    class_names: tuple[str, ...]
    skipped: int
    reader: Reader = dataclasses.field(repr=False, compare=False)
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    file_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False, compare=False)
    fetch: Fetcher | None = dataclasses.field(default=None, repr=False, compare=False)
    decode: RecordDecoder | None = dataclasses.field(default=None, repr=False, compare=False)

    def read(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Fetches one example; works eagerly and inside a tf.data map.

        Args:
            index: int64 scalar in [0, num_examples).

        Returns:
            (image, label): uint8 [H, W, 3] at the stored size; int32 scalar, -1 if unlabeled.
        """
        return self.reader(index)

    def take(self, ids: np.ndarray, name: str) -> Source:
        """The examples `ids` (int [M]) of this split, as a Source of M examples."""
        ids = np.asarray(ids, np.int64)
        ids_t = tf.constant(ids, tf.int64)
        fetch = self.fetch
        return dataclasses.replace(
            self,
            name=name,
            num_examples=len(ids),
            reader=lambda index: self.read(tf.gather(ids_t, index)),
            fetch=None if fetch is None else lambda indices: fetch(tf.gather(ids_t, indices)),
            labels=None if self.labels is None else self.labels[ids],
            file_names=None if self.file_names is None else tuple(self.file_names[i] for i in ids),
        )

    def keep_labels(self, ids: np.ndarray, name: str) -> Source:
        """Every example of this split, labelled only where its index is in `ids` (int [M]):
        the others read as unlabelled (-1), in `read`, `fetch` + `decode` and `labels` alike."""
        labelled = np.zeros(self.num_examples, bool)
        labelled[np.asarray(ids, np.int64)] = True
        labelled_t = tf.constant(labelled)

        def masked(label: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
            return tf.where(keep, label, tf.constant(-1, label.dtype))

        def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            image, label = self.read(index)
            return image, masked(label, tf.gather(labelled_t, index))

        fetch_records, decode_record = self.fetch, self.decode
        fetch = decode = None
        if fetch_records is not None:  # the mask travels with the records: decode sees no index

            def fetch(indices):
                return (*fetch_records(indices), tf.gather(labelled_t, indices))

            def decode(*record):
                image, label = decode_record(*record[:-1])
                return image, masked(label, record[-1])

        return dataclasses.replace(
            self,
            name=name,
            reader=read,
            fetch=fetch,
            decode=decode,
            labels=None if self.labels is None else np.where(labelled, self.labels, -1),
        )


def batched_reader(fetch: Fetcher, decode: RecordDecoder) -> Reader:
    """`read` for a Source that fetches in batches: a batch of one index."""

    def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        records = fetch(tf.reshape(tf.cast(index, tf.int64), [1]))  # each [1, ...]
        return decode(*(r[0] for r in records))

    return read


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes to uint8 [H, W, 3] (grayscale tiled, alpha dropped).

    JPEG goes through decode_jpeg(channels=3), which also converts CMYK correctly. The other
    formats are decoded with their own channel count and mapped to RGB here, because
    decode_image(channels=3) rejects RGBA WebP. 16-bit PNGs are scaled to uint8 by decode_image.
    """

    def other() -> tf.Tensor:
        image = tf.io.decode_image(contents, channels=0, expand_animations=False)  # [H, W, c]
        # c = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA -> which input channel feeds R, G and B.
        rgb_from = tf.constant([[0, 0, 0], [0, 0, 0], [0, 1, 2], [0, 1, 2]], tf.int32)
        return tf.gather(image, rgb_from[tf.shape(image)[-1] - 1], axis=-1)

    image = tf.cond(tf.io.is_jpeg(contents), lambda: tf.io.decode_jpeg(contents, channels=3), other)
    image.set_shape([None, None, 3])
    return image


def from_arrays(
    name: str,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] = (),
) -> Source:
    """An in-memory Source from uint8 images [N, H, W, 3] (or [N, H, W, 1]); handy for tests.

    Args:
        name: shown in logs.
        images: uint8 [N, H, W, 1 or 3].
        labels: int [N], or None for an unlabeled source.
        class_names: names for the labels (default "0".."C-1", C = max label + 1).
    """
    images = np.asarray(images, np.uint8)
    if labels is None:
        labels = np.full(len(images), -1, np.int32)
    labels = np.asarray(labels, np.int32)
    num_classes = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    names = tuple(class_names) or tuple(str(c) for c in range(num_classes))
    return Source(
        name=name,
        num_examples=len(images),
        num_classes=max(num_classes, len(names)),
        class_names=names,
        skipped=0,
        reader=array_reader(images, labels),
        labels=labels,
    )


def bytes_reader(encoded: Sequence[bytes], labels: np.ndarray, *, jpeg_only: bool) -> Reader:
    """Encoded images held in memory as one string tensor [N]; decoded per example in the graph."""
    encoded_t = tf.constant(np.asarray(encoded, dtype=object), tf.string)  # [N]
    labels_t = tf.constant(labels, tf.int32)  # [N]

    def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        contents = tf.gather(encoded_t, index)
        image = tf.io.decode_jpeg(contents, channels=3) if jpeg_only else decode_rgb(contents)
        return image, tf.gather(labels_t, index)

    return read


def array_reader(images: np.ndarray, labels: np.ndarray) -> Reader:
    """Decoded images of one shape [N, H, W, c] held in memory (TFDS mocks, small arrays)."""
    if images.ndim == 3:
        images = images[..., None]
    images_t = tf.constant(images, tf.uint8)  # [N, H, W, c]
    labels_t = tf.constant(labels, tf.int32)  # [N]
    tile = 3 if images.shape[-1] == 1 else 1

    def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.tile(tf.gather(images_t, index), [1, 1, tile])[..., :3]  # [H, W, 3]
        return image, tf.gather(labels_t, index)

    return read
