"""Data sources: random access to (image, label) by example index, readable inside a tf.data graph.

Three kinds, chosen by the `dataset` string of the config, one module each:

    demo               demo.py: 10,000 train / 2,000 test CIFAR-10 JPEGs shipped in the package
    imagefolder:PATH   imagefolder.py: PATH/train/<class>/*.jpg (+ PATH/test|val|validation),
                       PATH/<class>/*.jpg, or a flat PATH/*.jpg (unlabeled); read by path
    NAME               tfds_memory.py: a prepared TFDS dataset (cifar10, cifar100, stl10,
                       imagenette, imagenet2012)

All return a `Source` (base.py), the one interface pipeline.py reads. Nothing here touches the
network: TFDS data must already be prepared in `data_dir`.
"""

from __future__ import annotations

from ssl_jax.data.sources.base import SPLITS, Reader, Source, decode_rgb, from_arrays
from ssl_jax.data.sources.demo import DEMO_ARCHIVE, demo_source
from ssl_jax.data.sources.imagefolder import IMAGE_EXTENSIONS, folder_source
from ssl_jax.data.sources.tfds_memory import DATASET_HELP, tfds_source
from ssl_jax.errors import UserError

__all__ = [
    "DEMO_ARCHIVE",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "Reader",
    "Source",
    "decode_rgb",
    "from_arrays",
    "get_source",
]


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
        raise UserError(f"empty dataset name: {DATASET_HELP}")
    if dataset == "demo":
        return demo_source(split)
    if dataset.startswith("imagefolder:"):
        return folder_source(dataset.removeprefix("imagefolder:"), split, file_names)
    return tfds_source(dataset, split, data_dir, file_names)
