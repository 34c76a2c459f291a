"""The demo set: 10,000 train / 2,000 test CIFAR-10 JPEGs shipped in the package (offline)."""

from __future__ import annotations

import functools
import os
import tarfile

import numpy as np

from ssl_jax.data.sources.base import SPLITS, Source, bytes_reader
from ssl_jax.errors import UserError

_DATA_PACKAGE = os.path.dirname(os.path.dirname(__file__))  # ssl_jax/data
DEMO_ARCHIVE = os.path.join(_DATA_PACKAGE, "demo", "cifar10_demo.tar.xz")


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


def demo_source(split: str) -> Source:
    encoded, labels, classes = _demo_contents()[split]
    return Source(
        name=f"demo:{split}",
        num_examples=len(encoded),
        num_classes=len(classes),
        class_names=classes,
        skipped=0,
        reader=bytes_reader(encoded, labels, jpeg_only=True),
        labels=np.asarray(labels, np.int32),
    )
