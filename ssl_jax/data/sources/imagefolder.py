"""Image folders: PATH/train/<class>/*.jpg (+ PATH/test|val|validation), PATH/<class>/*.jpg, or a
flat PATH/*.jpg (unlabeled); files are read by path at training time.

Opening a split lists its files (cheap), then decodes every one of them once to drop the
unreadable ones: the scan, about 1 ms of a core per 256 px JPEG (benchmarks/folder_scan.py), so
tens of core-minutes for ImageNet's 1.28M files. With a `cache_dir` (the trainer's
<workdir>/cache), its result is kept there, keyed by the listing, so a restart after preemption
lists the folder again (seconds) but decodes nothing:

    <cache_dir>/imagefolder_<folder tag>_<hash of the folder path>_<hash of its listing>.json
        {"format", "folder", "listing_sha256", "num_files", "unreadable": [relative paths]}

A file that cannot be read later, at training time, is replaced by a mid-gray image with its own
label and counted (`FolderReader`): same size and mtime but broken bytes (bit rot), or deleted /
truncated during a run. A restart whose listing changed (a file added, removed, rewritten or
touched) scans again and trains on the new file list, so from there its batches differ from the
interrupted run's; an unchanged listing gives the same file list, batches and substitutions.

Paths may be local or on any filesystem tf.io.gfile knows (gs://, ...); see `_listing_key` for
what identifies a listing on each.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
from absl import logging

from ssl_jax import fileio
from ssl_jax.data.sources.base import Source, decode_rgb
from ssl_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_FOLDER_TEST_NAMES = ("test", "val", "validation")
_CACHE_FORMAT = "ssl_jax.imagefolder.scan/1"
FALLBACK_SIDE = 16  # side of the mid-gray image that replaces a file unreadable at read time


def _is_image(name: str) -> bool:
    # Dot files include macOS "._x.jpg" resource forks, which carry the extension but no image.
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _is_local(path: str) -> bool:
    return "://" not in path


def _entries(folder: str) -> tuple[list[str], list[str]]:
    """(subfolder names, file names) of one folder, each sorted; hidden subfolders left out.

    Local folders go through os.scandir (no extra system call per entry); others through
    tf.io.gfile, where an is-it-a-folder question costs a request per entry on an object store,
    so only names without an image extension are asked about (GCS marks folders "name/").
    """
    if _is_local(folder):
        with os.scandir(folder) as it:
            kinds = [(e.name, e.is_dir()) for e in it]  # is_dir follows links, as os.walk does
    else:
        kinds = []
        for name in tf.io.gfile.listdir(folder):
            if name.endswith("/"):
                kinds.append((name.rstrip("/"), True))
            else:
                is_dir = not _is_image(name) and tf.io.gfile.isdir(os.path.join(folder, name))
                kinds.append((name, is_dir))
    dirs = sorted(n for n, is_dir in kinds if is_dir and not n.startswith("."))
    files = sorted(n for n, is_dir in kinds if not is_dir)
    return dirs, files


def _images_under(root: str, folder: str) -> list[str]:
    """Image paths below root/folder, relative to root, in os.walk's top-down order: a folder's
    files sorted, then each subfolder in sorted order; hidden subfolders skipped."""
    found = []

    def visit(rel: str) -> None:
        try:
            dirs, files = _entries(os.path.join(root, rel))
        except (OSError, tf.errors.OpError) as e:  # as os.walk: an unlistable subfolder is left out
            logging.warning("Skipping %s: it cannot be listed (%s)", os.path.join(root, rel), e)
            return
        prefix = f"{rel}/" if rel else ""  # not os.path.join: 1.28M calls of it take seconds
        found.extend(prefix + f for f in files if _is_image(f))
        for d in dirs:
            visit(prefix + d)

    visit(folder)
    return found


def _check_readable(paths: list[str]) -> list[bool]:
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
    return ok.tolist()


# ---------------------------------------------------------------- the scan cache


def _stats(paths: list[str]) -> list[tuple[int, int]]:
    """(size, mtime ns) of each local file, (-1, -1) where stat fails (a dangling link: listed,
    and the scan finds it unreadable). 16 threads over 64 chunks: on a network filesystem each
    stat waits on a round trip, and os.stat releases the GIL meanwhile."""

    def chunk(part: list[str]) -> list[tuple[int, int]]:
        out = []
        for path in part:
            try:
                st = os.stat(path)
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, -1))
        return out

    n = len(paths)
    parts = [paths[i * n // 64 : (i + 1) * n // 64] for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        return [stat for part in pool.map(chunk, parts) for stat in part]


def _listing_key(split_dir: str, rel_paths: list[str]) -> str:
    """sha256 of the listing: every image's relative path, size and modification time (ns).

    Whether a file decodes depends on its bytes only. Hashing the bytes would read the whole
    folder, the very cost the cache saves; size and mtime are the proxy make and rsync trust, a
    stat per file (a few seconds for 1.28M local files, next to minutes of decoding). Adding,
    removing, rewriting or touching any image changes the key, and so forces a new scan. Off the
    local disk (gs://, ...) a stat is a request per file, so only the names count there: an
    object rewritten under the same name keeps the cached verdict, and if it no longer decodes
    the read-time fallback (FolderReader) catches it.
    """
    if _is_local(split_dir):
        stats = _stats([f"{split_dir}/{rel}" for rel in rel_paths])
    else:
        stats = [(-1, -1)] * len(rel_paths)
    # NUL cannot occur in a path, so the records cannot run into each other.
    records = zip(rel_paths, stats, strict=True)
    text = "".join(f"{r}\0{size}\0{mtime}\0" for r, (size, mtime) in records)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _cache_file(cache_dir: str, split_dir: str, key: str) -> str:
    """One file per (folder, listing). The listing's hash is in the name, so hosts that see the
    same listing share one file (all writing the same bytes, if they race) and hosts that see
    different ones (local copies with their own mtimes) keep a file each, instead of overwriting
    each other's at every start. A changed folder leaves its old file behind: a few hundred
    bytes plus the unreadable paths; deleting cache_dir only costs one scan."""
    tag = re.sub(r"[^A-Za-z0-9]+", "-", "/".join(split_dir.rstrip("/").split("/")[-2:]))
    where = hashlib.sha256(split_dir.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return fileio.join(cache_dir, f"imagefolder_{tag.strip('-')[:48]}_{where}_{key[:24]}.json")


def _load_scan(path: str, split_dir: str, key: str, rel_paths: list[str]) -> list[str] | None:
    """The unreadable files of a cached scan of exactly this listing; None: scan again.

    A file that cannot be read, parsed or that describes another listing is ignored with a
    warning (it is replaced by the new scan's), never trusted and never fatal.
    """
    try:
        if not fileio.exists(path):
            return None
        record = json.loads(fileio.read_bytes(path))
        unreadable = record["unreadable"]
        if not (
            record["format"] == _CACHE_FORMAT
            and record["folder"] == split_dir
            and record["listing_sha256"] == key
            and record["num_files"] == len(rel_paths)
            and isinstance(unreadable, list)
            and (not unreadable or set(unreadable) <= set(rel_paths))
        ):
            raise ValueError("it does not describe this listing")
        return unreadable
    except Exception as e:  # each filesystem has its own errors; a bad cache is never fatal
        logging.warning("Ignoring the scan cache %s (%s); scanning %s again", path, e, split_dir)
        return None


def _save_scan(path: str, record: dict) -> None:
    """Writes the cache whole (fileio.write_text): a kill mid-write never leaves half of one.
    A cache that cannot be written only warns."""
    try:
        fileio.makedirs(fileio.parent(path))
        fileio.write_text(path, json.dumps(record, indent=1))
    except Exception as e:  # each filesystem has its own errors; the cache is only a speed-up
        logging.warning(
            "Could not write the scan cache %s (%s); the next start scans again", path, e
        )


def _unreadable(split_dir: str, rel_paths: list[str], cache_dir: str | None) -> list[str]:
    """Relative paths of the files that do not decode: from the cache, or by decoding all."""
    cache = key = None
    if cache_dir:
        key = _listing_key(split_dir, rel_paths)
        cache = _cache_file(cache_dir, split_dir, key)
        unreadable = _load_scan(cache, split_dir, key, rel_paths)
        if unreadable is not None:
            logging.info(
                "Reusing the scan of %d images in %s from %s (nothing decoded)",
                len(rel_paths),
                split_dir,
                cache,
            )
            return unreadable
    logging.info("Scanning %d images in %s", len(rel_paths), split_dir)
    ok = _check_readable([f"{split_dir}/{r}" for r in rel_paths])
    unreadable = [r for r, good in zip(rel_paths, ok, strict=True) if not good]
    if cache and len(unreadable) < len(rel_paths):  # all unreadable is an error: keep no trace
        record = {
            "format": _CACHE_FORMAT,
            "folder": split_dir,
            "listing_sha256": key,
            "num_files": len(rel_paths),
            "unreadable": unreadable,
        }
        _save_scan(cache, record)
    return unreadable


# ---------------------------------------------------------------- reading


@tf.autograph.experimental.do_not_convert
def _read_rgb(path: tf.Tensor) -> tf.Tensor:
    return decode_rgb(tf.io.read_file(path))


class FolderReader:
    """The reader of an image-folder Source: example i is the file paths[i], read and decoded.

    A file that fails at read time (deleted, truncated or replaced since the scan) must not stop
    training, and cannot simply be dropped: each host has to produce exactly its rows of every
    batch. So its example becomes a mid-gray image (FALLBACK_SIDE x FALLBACK_SIDE, uint8 128)
    with its own label. The choice depends on nothing but the file, so every host and every
    resume makes the same one, and the augmentations, keyed by the example index, stay the same.

    The decode runs in a one-element tf.data pipeline whose errors are ignored, followed by the
    fallback; `take(1)` keeps whichever comes first, so the fallback (and the Python that counts
    it) runs only when the decode failed. This costs 0.1-0.3 ms of CPU per example, next to the
    4-6 ms of the SimCLR pipeline at 224 px (benchmarks/results/folder_scan_cpu.md).

    Attributes:
        failed_reads: reads replaced by the fallback so far, in this process (a file that stays
            broken counts once per epoch; batches prefetched ahead count too).
        failed_files: the distinct paths behind them, sorted; each is named once in a warning.
    """

    def __init__(self, paths: list[str], labels: list[int]):
        self._paths = tf.constant(paths, tf.string)  # [N]
        self._labels = tf.constant(labels, tf.int32)  # [N]
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        # A tf.function, so eager reads trace the nested pipeline once, not at every call.
        self._read = tf.function(
            self._guarded_read, input_signature=[tf.TensorSpec([], tf.int64)], autograph=False
        )

    def __call__(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._read(tf.cast(index, tf.int64))

    @property
    def failed_reads(self) -> int:
        with self._lock:
            return sum(self._failures.values())

    @property
    def failed_files(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._failures))

    def _guarded_read(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        path = tf.gather(self._paths, index)
        decoded = tf.data.Dataset.from_tensors(path).map(_read_rgb).ignore_errors()
        fallback = tf.data.Dataset.from_tensors(path).map(self._fallback)
        image = decoded.concatenate(fallback).take(1).get_single_element()  # [H, W, 3]
        return image, tf.gather(self._labels, index)

    @tf.autograph.experimental.do_not_convert
    def _fallback(self, path: tf.Tensor) -> tf.Tensor:
        noted = tf.numpy_function(self._note_failure, [path], tf.int64, stateful=True)
        with tf.control_dependencies([noted]):
            return tf.fill([FALLBACK_SIDE, FALLBACK_SIDE, 3], tf.constant(128, tf.uint8))

    def _note_failure(self, path: bytes) -> np.int64:
        name = path.decode("utf-8", "replace")
        with self._lock:
            first = name not in self._failures
            self._failures[name] = self._failures.get(name, 0) + 1
        if first:
            logging.warning(
                "Could not read %s at training time (changed since the folder was scanned?); "
                "its example is a gray image on every host and epoch, and counted",
                name,
            )
        return np.int64(0)


# ---------------------------------------------------------------- the source


def _folder_layout_help(path: str) -> str:
    return (
        f"expected {path}/<class>/*.jpg (labeled), {path}/*.jpg (unlabeled), or "
        f"{path}/train/... with optional {path}/test/...; "
        "images are .jpg/.jpeg/.png/.bmp/.gif/.webp"
    )


def _folder_splits(path: str) -> dict[str, str | None]:
    """Split name -> folder (None when absent)."""
    if tf.io.gfile.isdir(os.path.join(path, "train")):
        test = [os.path.join(path, n) for n in _FOLDER_TEST_NAMES]
        return {
            "train": os.path.join(path, "train"),
            "test": next(filter(tf.io.gfile.isdir, test), None),
        }
    return {"train": path, "test": None}


def _labelled_listing(
    split_dir: str, split: str, train_dir: str
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """(image paths relative to split_dir, their labels, class names) from the listing alone.

    Class subfolders give the labels; without any image in a subfolder the split is flat and
    unlabeled (label -1).
    """
    try:
        subdirs, files = _entries(split_dir)
    except (OSError, tf.errors.OpError) as e:
        raise UserError(
            f"imagefolder: cannot list {split_dir} ({e}); check its permissions"
        ) from None
    classes = {name: _images_under(split_dir, name) for name in subdirs}
    if not any(classes.values()):
        rel_paths = [f for f in files if _is_image(f)]
        return rel_paths, [-1] * len(rel_paths), ()
    loose = [f for f in files if _is_image(f)]
    if loose:
        logging.warning(
            "Ignoring %d image(s) directly in %s: class subfolders define the labels",
            len(loose),
            split_dir,
        )
    # Every subfolder is a class, empty ones included, so label c names the same class in every
    # split; the train split's folders fix the mapping.
    class_names = tuple(classes)
    if split != "train":
        train_names = tuple(_entries(train_dir)[0])
        extra = sorted(set(class_names) - set(train_names))
        if train_names and extra:
            raise UserError(
                f"imagefolder: {split_dir} has classes missing from {train_dir}: "
                f"{extra[:5]}; use the same class subfolders in every split"
            )
        class_names = train_names or class_names
    lookup = {c: i for i, c in enumerate(class_names)}
    rel_paths = [p for ps in classes.values() for p in ps]
    labels = [lookup[c] for c, ps in classes.items() for _ in ps]
    return rel_paths, labels, class_names


def folder_source(
    path: str, split: str, file_names: bool = False, cache_dir: str | None = None
) -> Source | None:
    """One split of an image folder (see the module docstring).

    Args:
        path: the folder, local or any tf.io.gfile path (gs://...).
        split: "train" or "test" (test/, val/ or validation/).
        file_names: keep every example's path in `Source.file_names`.
        cache_dir: where the scan is cached (the trainer passes <workdir>/cache); None decodes
            every file at every call.

    Returns:
        The Source (its reader a FolderReader), or None when the folder has no such split.

    Raises:
        UserError: not a folder, no images, or no image that decodes.
    """
    if _is_local(path):
        path = os.path.abspath(os.path.expanduser(path))
    else:
        path = path.rstrip("/")
    if not tf.io.gfile.isdir(path):
        raise UserError(f"imagefolder: {path} is not a folder; {_folder_layout_help(path)}")
    split_dirs = _folder_splits(path)
    split_dir = split_dirs[split]
    if split_dir is None:
        return None

    rel_paths, labels, class_names = _labelled_listing(split_dir, split, split_dirs["train"])
    if not rel_paths:
        raise UserError(f"imagefolder: no images in {split_dir}; {_folder_layout_help(path)}")

    bad = set(_unreadable(split_dir, rel_paths, cache_dir))
    if bad:
        logging.warning(
            "Skipped %d unreadable image(s) of %d in %s, e.g. %s",
            len(bad),
            len(rel_paths),
            split_dir,
            ", ".join([f"{split_dir}/{r}" for r in rel_paths if r in bad][:3]),
        )
    kept = [i for i, r in enumerate(rel_paths) if r not in bad]
    if not kept:
        raise UserError(
            f"imagefolder: none of the {len(bad)} image files in {split_dir} could be decoded; "
            "check that they are valid JPEG/PNG/BMP/GIF/WebP files"
        )
    paths = [f"{split_dir}/{rel_paths[i]}" for i in kept]
    labels = [labels[i] for i in kept]
    return Source(
        name=f"imagefolder:{path}:{split}",
        num_examples=len(paths),
        num_classes=len(class_names),
        class_names=class_names,
        skipped=len(bad),
        reader=FolderReader(paths, labels),
        labels=np.asarray(labels, np.int32),
        file_names=tuple(paths) if file_names else None,
    )
