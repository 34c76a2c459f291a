"""Data sources: random access to (image, label) by example index, readable inside a tf.data graph.

Three kinds, chosen by the `dataset` string of the config:

    demo               10,000 train / 2,000 test CIFAR-10 JPEGs shipped in the package (offline)
    imagefolder:PATH   PATH/train/<class>/*.jpg (+ PATH/test|val|validation), PATH/<class>/*.jpg,
                       or a flat PATH/*.jpg (unlabeled); files are read by path at training time
    NAME               a prepared TFDS dataset: cifar10, cifar100, stl10, imagenette, imagenet2012

A `Source` only knows how to fetch example i; order, sharding and augmentation live in pipeline.py.
Nothing here touches the network: TFDS data must already be prepared in `data_dir`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tarfile
import unittest.mock
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from ssl_jax.errors import UserError

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DEMO_ARCHIVE = os.path.join(os.path.dirname(__file__), "demo", "cifar10_demo.tar.xz")
_FOLDER_TEST_NAMES = ("test", "val", "validation")
_DATASET_HELP = (
    "use `demo` (bundled, offline), `imagefolder:PATH` (PATH/<class>/*.jpg or "
    "PATH/train/<class>/...), or a TFDS name such as cifar10, cifar100, stl10, imagenette, "
    "imagenet2012"
)

Reader = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


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
            cannot tell.
        file_names: every example's file name or path (an image folder's paths, the TFDS
            `file_name` feature such as imagenet2012's "n01440764_10026.JPEG"), what a list of
            file names (`label_subset_file`) is matched against. Only kept when asked for
            (`get_source(..., file_names=True)`); None otherwise, or when the data has none.
    """

    name: str
    num_examples: int
    num_classes: int
    class_names: tuple[str, ...]
    skipped: int
    reader: Reader = dataclasses.field(repr=False, compare=False)
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    file_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False, compare=False)

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
        return dataclasses.replace(
            self,
            name=name,
            num_examples=len(ids),
            reader=lambda index: self.read(tf.gather(ids_t, index)),
            labels=None if self.labels is None else self.labels[ids],
            file_names=None if self.file_names is None else tuple(self.file_names[i] for i in ids),
        )


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


def get_source(
    dataset: str, split: str, data_dir: str | None = None, *, file_names: bool = False
) -> Source | None:
    """Opens one split of a dataset.

    Args:
        dataset: "demo", "imagefolder:PATH" or a TFDS name (see the module docstring).
        split: "train" or "test". For TFDS, "test" falls back to "validation" when the dataset has
            no test split (imagenet2012, imagenette); for an image folder, to val/ or validation/.
        data_dir: TFDS data directory (None: TFDS's default, $TFDS_DATA_DIR or
            ~/tensorflow_datasets).
        file_names: also keep every example's file name in `Source.file_names` (image folders:
            their paths; TFDS: the `file_name` feature, where the dataset has one, such as
            imagenet2012; the demo set: none, its file names repeat across classes).

    Returns:
        The Source, or None when the dataset has no such split (an image folder without test/).

    Raises:
        UserError: unknown dataset, TFDS data not prepared, missing/empty/unreadable image folder.
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    if not dataset:
        raise UserError(f"empty dataset name: {_DATASET_HELP}")
    if dataset == "demo":
        return _demo_source(split)
    if dataset.startswith("imagefolder:"):
        return _folder_source(dataset.removeprefix("imagefolder:"), split, file_names)
    return _tfds_source(dataset, split, data_dir, file_names)


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
        reader=_array_reader(images, labels),
        labels=labels,
    )


# ---------------------------------------------------------------- in-memory readers


def _bytes_reader(encoded: Sequence[bytes], labels: np.ndarray, *, jpeg_only: bool) -> Reader:
    """Encoded images held in memory as one string tensor [N]; decoded per example in the graph."""
    encoded_t = tf.constant(np.asarray(encoded, dtype=object), tf.string)  # [N]
    labels_t = tf.constant(labels, tf.int32)  # [N]

    def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        contents = tf.gather(encoded_t, index)
        image = tf.io.decode_jpeg(contents, channels=3) if jpeg_only else decode_rgb(contents)
        return image, tf.gather(labels_t, index)

    return read


def _array_reader(images: np.ndarray, labels: np.ndarray) -> Reader:
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


# ---------------------------------------------------------------- demo


@functools.lru_cache(maxsize=1)
def _demo_contents() -> dict[str, tuple[list[bytes], np.ndarray, tuple[str, ...]]]:
    """Reads the bundled archive once per process: split -> (JPEG bytes, labels, class names)."""
    if not os.path.exists(DEMO_ARCHIVE):
        raise UserError(f"demo archive missing at {DEMO_ARCHIVE}; reinstall ssl_jax")
    files: dict[str, dict[str, bytes]] = {split: {} for split in SPLITS}
    with tarfile.open(DEMO_ARCHIVE, "r:xz") as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] in files:
                files[parts[0]][member.name] = archive.extractfile(member).read()
    out = {}
    for split, by_name in files.items():
        names = sorted(by_name)
        classes = tuple(sorted({n.split("/")[1] for n in names}))
        lookup = {c: i for i, c in enumerate(classes)}
        labels = np.array([lookup[n.split("/")[1]] for n in names], np.int32)
        out[split] = ([by_name[n] for n in names], labels, classes)
    return out


def _demo_source(split: str) -> Source:
    encoded, labels, classes = _demo_contents()[split]
    return Source(
        name=f"demo:{split}",
        num_examples=len(encoded),
        num_classes=len(classes),
        class_names=classes,
        skipped=0,
        reader=_bytes_reader(encoded, labels, jpeg_only=True),
        labels=np.asarray(labels, np.int32),
    )


# ---------------------------------------------------------------- image folder


def _is_image(name: str) -> bool:
    # Dot files include macOS "._x.jpg" resource forks, which carry the extension but no image.
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: str) -> list[str]:
    """Image paths anywhere below `folder`, sorted, skipping hidden folders."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if _is_image(f))
    return found


def _subfolders(folder: str) -> list[str]:
    """Names of the non-hidden subfolders, sorted: the class names of a labeled split."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _check_readable(paths: list[str], where: str) -> tuple[list[bool], int]:
    """Decodes every file once; which ones fail?

    The decodes run as a parallel tf.data map (TF's thread pool, no GIL, no per-file Python), and
    ignore_errors drops the files whose read or decode fails, so the indices that come out are the
    readable ones. JPEGs decode at 1/8 scale: the entropy-coded data, where truncation and
    corruption show, is still read in full, at a fraction of the cost of a full decode.
    """

    def check(index: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
        contents = tf.io.read_file(path)
        image = tf.cond(
            tf.io.is_jpeg(contents),
            lambda: tf.io.decode_jpeg(contents, channels=3, ratio=8),
            lambda: decode_rgb(contents),
        )
        with tf.control_dependencies([tf.debugging.assert_positive(tf.size(image))]):
            return tf.identity(index)

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths))
    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors().batch(4096)
    ok = np.zeros(len(paths), bool)
    for good in ds.as_numpy_iterator():
        ok[good] = True
    bad = [p for p, good in zip(paths, ok, strict=True) if not good]
    if bad:
        logging.warning(
            "Skipped %d unreadable image(s) of %d in %s, e.g. %s",
            len(bad),
            len(paths),
            where,
            ", ".join(bad[:3]),
        )
    return ok.tolist(), len(bad)


def _folder_layout_help(path: str) -> str:
    return (
        f"expected {path}/<class>/*.jpg (labeled), {path}/*.jpg (unlabeled), or "
        f"{path}/train/... with optional {path}/test/...; "
        "images are .jpg/.jpeg/.png/.bmp/.gif/.webp"
    )


def _folder_splits(path: str) -> dict[str, str | None]:
    """Split name -> folder (None when absent)."""
    if os.path.isdir(os.path.join(path, "train")):
        test = [os.path.join(path, n) for n in _FOLDER_TEST_NAMES]
        return {
            "train": os.path.join(path, "train"),
            "test": next(filter(os.path.isdir, test), None),
        }
    return {"train": path, "test": None}


def _folder_source(path: str, split: str, file_names: bool = False) -> Source | None:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise UserError(f"imagefolder: {path} is not a folder; {_folder_layout_help(path)}")
    split_dirs = _folder_splits(path)
    split_dir = split_dirs[split]
    if split_dir is None:
        return None

    classes = {
        name: _images_under(os.path.join(split_dir, name)) for name in _subfolders(split_dir)
    }
    if any(classes.values()):
        loose = [e.name for e in os.scandir(split_dir) if e.is_file() and _is_image(e.name)]
        if loose:
            logging.warning(
                "Ignoring %d image(s) directly in %s: class subfolders define the labels",
                len(loose),
                split_dir,
            )
        # Every subfolder is a class, empty ones included, so label c names the same class in
        # every split; the train split's folders fix the mapping.
        class_names = tuple(classes)
        if split != "train":
            train_names = tuple(_subfolders(split_dirs["train"]))
            extra = sorted(set(class_names) - set(train_names))
            if train_names and extra:
                raise UserError(
                    f"imagefolder: {split_dir} has classes missing from {split_dirs['train']}: "
                    f"{extra[:5]}; use the same class subfolders in every split"
                )
            class_names = train_names or class_names
        lookup = {c: i for i, c in enumerate(class_names)}
        paths = [p for c, ps in classes.items() for p in ps]
        labels = [lookup[c] for c, ps in classes.items() for _ in ps]
    else:
        class_names = ()
        paths = [os.path.join(split_dir, n) for n in sorted(os.listdir(split_dir)) if _is_image(n)]
        labels = [-1] * len(paths)
    if not paths:
        raise UserError(f"imagefolder: no images in {split_dir}; {_folder_layout_help(path)}")

    logging.info("Scanning %d images in %s", len(paths), split_dir)
    ok, skipped = _check_readable(paths, split_dir)
    paths = [p for p, good in zip(paths, ok, strict=True) if good]
    labels = [y for y, good in zip(labels, ok, strict=True) if good]
    if not paths:
        raise UserError(
            f"imagefolder: none of the {skipped} image files in {split_dir} could be decoded; "
            "check that they are valid JPEG/PNG/BMP/GIF/WebP files"
        )

    paths_t = tf.constant(paths, tf.string)  # [N]
    labels_t = tf.constant(labels, tf.int32)  # [N]

    def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = decode_rgb(tf.io.read_file(tf.gather(paths_t, index)))
        return image, tf.gather(labels_t, index)

    return Source(
        name=f"imagefolder:{path}:{split}",
        num_examples=len(paths),
        num_classes=len(class_names),
        class_names=class_names,
        skipped=skipped,
        reader=read,
        labels=np.asarray(labels, np.int32),
        file_names=tuple(paths) if file_names else None,
    )


# ---------------------------------------------------------------- TFDS


def _tfds_is_mocked() -> bool:
    # tfds.testing.mock_data serves fake examples without preparing anything on disk, so
    # is_prepared() stays False under it; it patches as_dataset with a plain function, not a Mock.
    as_dataset = tfds.core.DatasetBuilder.as_dataset
    module = getattr(as_dataset, "__module__", "") or ""
    return module.startswith("tensorflow_datasets.testing") or isinstance(
        as_dataset, unittest.mock.Mock
    )


def _tfds_source(
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
        raise UserError(f"unknown dataset {name!r}: {_DATASET_HELP}") from None
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
        reader = _bytes_reader(images, labels, jpeg_only=False)
    else:
        # Some mocks and custom builders hand back decoded arrays despite SkipDecoding.
        reader = _array_reader(np.stack(images), labels)
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
