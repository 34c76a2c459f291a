"""Builds the bundled demo dataset, ssl_jax/data/demo/cifar10_demo.tar.xz, from a CIFAR-10 JPEG tar.

Run once by a maintainer, never at training time:

    python -m ssl_jax.data.build_demo /work/shared/data/cifar10-jpeg.tar.gz

The input tar holds train/<class>/NNNN.jpg and test/<class>/NNNN.jpg. The output keeps the same
layout with the first 1,000 train and the first 200 test JPEGs per class (by sorted file name),
re-packed with xz. The JPEG bytes are copied untouched, so the demo pixels equal the source tar's
pixels. Member metadata (mtime, owner) is zeroed so that rebuilding gives a byte-identical archive.
"""

from __future__ import annotations

import argparse
import collections
import io
import lzma
import os
import tarfile

PER_CLASS = {"train": 1000, "test": 200}
DEFAULT_OUTPUT = os.path.join(os.path.dirname(__file__), "demo", "cifar10_demo.tar.xz")


def select_members(names: list[str]) -> list[str]:
    """Picks the demo subset from member names: first N files per (split, class), sorted by name."""
    by_class: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for name in names:
        parts = name.split("/")
        if len(parts) != 3 or parts[0] not in PER_CLASS or not parts[2].lower().endswith(".jpg"):
            continue
        by_class[(parts[0], parts[1])].append(name)
    chosen = []
    for (split, _), files in sorted(by_class.items()):
        chosen.extend(sorted(files)[: PER_CLASS[split]])
    return chosen


def build(source_tar: str, output: str = DEFAULT_OUTPUT) -> int:
    """Writes the demo archive and returns its size in bytes."""
    with tarfile.open(source_tar, "r:*") as src:
        members = {m.name.removeprefix("./"): m for m in src.getmembers() if m.isfile()}
        chosen = select_members(list(members))
        if not chosen:
            raise SystemExit(
                f"no train/<class>/*.jpg or test/<class>/*.jpg members in {source_tar}"
            )
        payload = {name: src.extractfile(members[name]).read() for name in chosen}

    os.makedirs(os.path.dirname(output), exist_ok=True)
    tmp = output + ".tmp"
    # Preset 9 | EXTREME: the JPEG headers repeat in every file and a large dictionary finds them.
    with lzma.open(tmp, "wb", preset=9 | lzma.PRESET_EXTREME) as xz:
        with tarfile.open(fileobj=xz, mode="w", format=tarfile.GNU_FORMAT) as dst:
            for name in chosen:
                info = tarfile.TarInfo(name)
                info.size = len(payload[name])
                info.mode = 0o644
                dst.addfile(info, io.BytesIO(payload[name]))
    os.replace(tmp, output)
    counts = collections.Counter(name.split("/")[0] for name in chosen)
    size = os.path.getsize(output)
    print(f"wrote {output}: {dict(counts)} images, {size / 1e6:.2f} MB")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_tar", help="CIFAR-10 JPEG tar (train/<class>/*.jpg, test/...)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="where to write the .tar.xz")
    args = parser.parse_args()
    build(args.source_tar, args.output)


if __name__ == "__main__":
    main()
