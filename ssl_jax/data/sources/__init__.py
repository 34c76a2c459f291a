"""Data sources: random access to (image, label) by example index, readable inside a tf.data graph.

Four kinds, chosen by the `dataset` string of the config, one module each:

    demo               demo.py: 10,000 train / 2,000 test CIFAR-10 JPEGs shipped in the package
    imagefolder:PATH   imagefolder.py: PATH/train/<class>/*.jpg (+ PATH/test|val|validation),
                       PATH/<class>/*.jpg, or a flat PATH/*.jpg (unlabeled); read by path
    NAME               a prepared TFDS dataset (cifar10, cifar100, stl10, imagenette,
                       imagenet2012); tfds_common.py opens it, then by how it was prepared:
      array_record     tfds_random_access.py: records read by index from disk, a batch at a
                       time, only this host's (ImageNet scale: nothing loaded up front)
      TFRecord         tfds_memory.py: the split held in host RAM as encoded bytes, up to
                       `ram_limit_gb` (config.data_ram_limit_gb); a larger one is an error
                       that says how to re-prepare it as array_record

All return a `Source` (base.py), the one interface pipeline.py reads. Nothing here touches the
network: TFDS data must already be prepared in `data_dir`.
"""

from __future__ import annotations

from ssl_jax import fileio
from ssl_jax.data.sources import tfds_common
from ssl_jax.data.sources.base import SPLITS, Reader, Source, decode_rgb, from_arrays
from ssl_jax.data.sources.demo import DEMO_ARCHIVE, demo_source
from ssl_jax.data.sources.imagefolder import IMAGE_EXTENSIONS, folder_source
from ssl_jax.data.sources.tfds_common import DATASET_HELP
from ssl_jax.data.sources.tfds_memory import tfds_source
from ssl_jax.data.sources.tfds_random_access import random_access_source
from ssl_jax.errors import UserError

__all__ = [
    "DEMO_ARCHIVE",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "Reader",
    "Source",
    "decode_rgb",
    "from_arrays",
    "get_run_source",
    "get_source",
]


def get_source(
    dataset: str,
    split: str,
    data_dir: str | None = None,
    *,
    file_names: bool = False,
    ram_limit_gb: float | None = None,
    cache_dir: str | None = None,
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
        ram_limit_gb: the most GB (1e9 bytes) of prepared TFDS files to load into host RAM
            (TFRecord-prepared data; config.data_ram_limit_gb); None: no limit. array_record data
            is read from disk whatever its size.
        cache_dir: image folders: where the scan (which files decode) is cached, keyed by the
            folder's listing, so a restart decodes nothing (the trainer: <workdir>/cache); None
            scans at every call. Other datasets ignore it.

    Returns:
        The Source, or None when the dataset has no such split (an image folder without test/).

    Raises:
        UserError: unknown dataset, TFDS data not prepared or TFRecord data larger than
            ram_limit_gb, missing/empty/unreadable image folder.
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    if not dataset:
        raise UserError(f"empty dataset name: {DATASET_HELP}")
    if dataset == "demo":
        return demo_source(split)
    if dataset.startswith("imagefolder:"):
        path = dataset.removeprefix("imagefolder:")
        return folder_source(path, split, file_names, cache_dir=cache_dir)
    opened = tfds_common.open_split(dataset, split, data_dir)
    if opened is None:
        return None
    if tfds_common.random_access(opened):
        return random_access_source(opened, file_names)
    tfds_common.check_ram_limit(opened, ram_limit_gb)
    return tfds_source(opened, file_names)


def get_run_source(config, split: str, workdir: str, *, file_names: bool = False) -> Source | None:
    """`split` of `config.dataset` as a run in `workdir` opens it: TFDS's `config.data_dir`, the
    RAM limit `config.data_ram_limit_gb` (absent in older configs: no limit), and an image
    folder's scan cached in <workdir>/cache, so a restart decodes nothing."""
    return get_source(
        config.dataset,
        split,
        config.data_dir,
        file_names=file_names,
        ram_limit_gb=config.get("data_ram_limit_gb"),
        cache_dir=fileio.join(workdir, "cache"),
    )
