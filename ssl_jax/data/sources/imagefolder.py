"""Image folders: PATH/train/<class>/*.jpg (+ PATH/test|val|validation), PATH/<class>/*.jpg, or a
flat PATH/*.jpg (unlabeled); files are read by path at training time."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from ssl_jax.data.sources.base import Source, decode_rgb
from ssl_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_FOLDER_TEST_NAMES = ("test", "val", "validation")


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


def folder_source(path: str, split: str, file_names: bool = False) -> Source | None:
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
