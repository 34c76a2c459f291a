"""What both TFDS sources share: opening a prepared split, its features, and which reader fits it.

`open_split` opens the builder (one-line UserErrors for an unknown, unopenable or unprepared
dataset), picks the split ("test" falls back to "validation") and finds the image, label and
file-name features. `random_access` tells whether the split can be read by index from disk
(prepared as array_record: tfds_random_access.py); otherwise tfds_memory.py holds it in RAM,
after `check_ram_limit`.
"""

from __future__ import annotations

import dataclasses
import unittest.mock

import tensorflow_datasets as tfds

from ssl_jax.errors import UserError

DATASET_HELP = (
    "use `demo` (bundled, offline), `imagefolder:PATH` (PATH/<class>/*.jpg or "
    "PATH/train/<class>/...), or a TFDS name such as cifar10, cifar100, stl10, imagenette, "
    "imagenet2012"
)


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """One opened split of a TFDS dataset.

    Attributes:
        name: the dataset name as the user wrote it ("imagenet2012", "cifar10").
        split: the TFDS split read ("train", "test" or "validation").
        data_dir: the user's TFDS data_dir (None: TFDS's default).
        builder: the DatasetBuilder.
        mocked: tfds.testing.mock_data is active (fake examples, nothing on disk).
        image_key: the image feature.
        label_key: the ClassLabel feature "label", or None (unlabeled: every label is -1).
        class_names: C names of the labels.
        name_key: the "file_name" feature (imagenet2012's "n01440764_10026.JPEG"), or None.
    """

    name: str
    split: str
    data_dir: str | None
    builder: tfds.core.DatasetBuilder
    mocked: bool
    image_key: str
    label_key: str | None
    class_names: tuple[str, ...]
    name_key: str | None

    @property
    def source_name(self) -> str:
        return f"{self.name}:{self.split}"

    @property
    def num_bytes(self) -> int:
        """Size of the split's prepared files (encoded images), 0 when unknown (mocks)."""
        try:
            return int(self.builder.info.splits[self.split].num_bytes)
        except (KeyError, ValueError, TypeError):
            return 0


def tfds_is_mocked() -> bool:
    # tfds.testing.mock_data serves fake examples without preparing anything on disk, so
    # is_prepared() stays False under it; it patches as_dataset with a plain function, not a Mock.
    as_dataset = tfds.core.DatasetBuilder.as_dataset
    module = getattr(as_dataset, "__module__", "") or ""
    return module.startswith("tensorflow_datasets.testing") or isinstance(
        as_dataset, unittest.mock.Mock
    )


def open_split(name: str, split: str, data_dir: str | None) -> TfdsSplit | None:
    """Opens split "train" or "test" of a prepared TFDS dataset; None when it has no such split.

    Raises:
        UserError: unknown dataset, bad name, not prepared in data_dir, no image feature.
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(f"unknown dataset {name!r}: {DATASET_HELP}") from None
    except Exception as e:  # Bad config names ("cifar10/x") and similar; keep it to one line.
        raise UserError(f"cannot open TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    mocked = tfds_is_mocked()
    if not (mocked or builder.is_prepared()):
        where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise UserError(
            f"TFDS dataset {name!r} is not prepared in {where}; ssl_jax never downloads. "
            f"Run `tfds build {name} --file_format=array_record --data_dir=DIR` on a machine "
            "with network and set config.data_dir=DIR, or use imagefolder:PATH"
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
    return TfdsSplit(
        name=name,
        split=wanted,
        data_dir=data_dir,
        builder=builder,
        mocked=mocked,
        image_key=image_key,
        label_key=label_key,
        class_names=tuple(features[label_key].names) if label_key else (),
        name_key="file_name" if "file_name" in features else None,
    )


def random_access(opened: TfdsSplit) -> bool:
    """Can the split be read by index from disk (tfds_random_access.py)?

    Yes when it is prepared in the array_record format (alone or beside TFRecord) and its
    image is an encoded `tfds.features.Image`. Mocks
    always take the in-memory path: they fake `as_dataset`.
    """
    if opened.mocked:
        return False
    info = opened.builder.info
    formats = set(info.available_file_formats())
    encoded = isinstance(info.features[opened.image_key], tfds.features.Image)
    return encoded and tfds.core.FileFormat.ARRAY_RECORD in formats


def check_ram_limit(opened: TfdsSplit, ram_limit_gb: float | None) -> None:
    """Refuses to load a split larger than `ram_limit_gb` into host RAM (tfds_memory.py).

    Raises:
        UserError: one line naming the size, the limit and how to re-prepare the dataset for
            random access or use an image folder instead.
    """
    size = opened.num_bytes
    if ram_limit_gb is None or opened.mocked or size <= ram_limit_gb * 1e9:
        return
    # tfds build reuses a prepared version as it is, whatever --file_format says: hence
    # --overwrite (it keeps DIR/downloads, where imagenet2012's manual tars are).
    raise UserError(
        f"TFDS {opened.source_name} is prepared as TFRecord, which ssl_jax loads into host RAM "
        f"on every host, and its {size / 1e9:.1f} GB exceed data_ram_limit_gb="
        f"{ram_limit_gb:g}: re-prepare it for random access from disk with `tfds build "
        f"{opened.name} --file_format=array_record --data_dir={opened.data_dir or 'DIR'}` "
        "(add --overwrite to replace the TFRecord files), use imagefolder:PATH, or raise "
        "--config.data_ram_limit_gb"
    )
