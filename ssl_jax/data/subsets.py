"""Labelled subsets of a train split: the 1% / 10% fine-tuning sets and the few-shot draws.

A subset is a sorted array of example ids (indices into the split), class-balanced: every class
gets the same number of examples, or one more where the total does not divide evenly. It depends
only on (labels, size, seed): the same call gives the same ids on every host and every rerun, and
another seed gives another draw. Runs write the ids they used to their workdir (`save_subset`)
and read them back on resume (`load_subset`), so a resumed run cannot draw a different subset
even if this module changes.

Papers differ here: SimCLR's ImageNet 1% / 10% files keep each class's share of the train split
(ImageNet's classes have 732 to 1,300 images), and TFDS serves them as `imagenet2012_subset/1pct`
and `/10pct`; CIFAR-10's classes are equal, so there the two conventions agree. To train on
those exact images, pass the files themselves (`label_subset_file`: google-research/simclr's
imagenet_subsets/1percent.txt or 10percent.txt, one file name per line) instead of a draw:
`listed_ids` matches them to the train split by file name.
"""

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from ssl_jax import fileio
from ssl_jax.errors import UserError


def subset_size(num_labelled: int, *, fraction: float | None = None,
                per_class: int | None = None, num_classes: int) -> int:  # fmt: skip
    """The number of examples asked for: round(fraction * N), or per_class * classes."""
    if (fraction is None) == (per_class is None):
        raise UserError("give exactly one of label_fraction and labels_per_class")
    if per_class is not None:
        if per_class < 1 or int(per_class) != per_class:
            raise UserError(f"labels_per_class={per_class} must be a positive integer")
        return int(per_class) * num_classes
    if not 0 < fraction <= 1:
        raise UserError(f"label_fraction={fraction} must be in (0, 1], e.g. 0.01 for 1%")
    return max(num_classes, round(fraction * num_labelled))


def class_balanced_subset(labels, *, size: int, seed: int) -> np.ndarray:
    """Sorted int64 ids of `size` labelled examples, balanced over the classes present.

    Args:
        labels: int [N], the split's labels; -1 (unlabelled) is never chosen.
        size: how many ids; each class gets size // C, and size % C classes (chosen by the seed)
            one more. All labelled examples (100%) are returned as they are, balanced or not.
        seed: which draw.

    Raises:
        UserError: when a class has fewer examples than its share, or size exceeds the labelled
            examples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [N], got shape {labels.shape}")
    classes = np.unique(labels[labels >= 0])
    if classes.size == 0:
        raise UserError("the split has no labelled examples to draw a labelled subset from")
    if not 0 < size <= int(np.sum(labels >= 0)):
        raise UserError(f"a subset of {size} examples cannot be drawn from "
                        f"{int(np.sum(labels >= 0))} labelled ones")  # fmt: skip
    if size == int(np.sum(labels >= 0)):  # 100%: every label, however unequal the classes
        return np.flatnonzero(labels >= 0).astype(np.int64)
    # The size is part of the stream, so the 1% and 10% draws of one seed are independent.
    rng = np.random.default_rng(np.random.SeedSequence([seed, size]))
    quota = np.full(classes.size, size // classes.size)
    quota[rng.permutation(classes.size)[: size % classes.size]] += 1
    chosen = []
    for c, n in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == c)
        if members.size < n:
            raise UserError(
                f"class {c} has {members.size} labelled examples, fewer than its share of "
                f"{n}; ask for fewer labels"
            )
        chosen.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def save_subset(path: str, ids: np.ndarray, **facts) -> None:
    """Writes ids and the facts that define them (seed, size, split size, ...) as JSON."""
    record = {**facts, "num_ids": int(len(ids)), "ids": [int(i) for i in ids]}
    fileio.write_text(path, json.dumps(record))  # whole: a kill never leaves half of one


def read_subset(path: str) -> tuple[np.ndarray, dict]:
    """(the ids saved at `path`, the facts saved with them)."""
    try:
        record = json.loads(fileio.read_text(path))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the labelled subset {path} ({e}); delete it to draw "
                        "it again") from None  # fmt: skip
    ids = np.asarray(record["ids"], np.int64)
    if ids.size != record.get("num_ids"):
        raise UserError(f"{path} is damaged ({ids.size} ids, {record.get('num_ids')} declared)")
    return ids, record


def load_subset(path: str, **expected) -> np.ndarray:
    """The ids saved at `path`; every fact in `expected` must match what was saved."""
    ids, record = read_subset(path)
    for key, value in expected.items():
        if record.get(key) != value:
            raise UserError(
                f"{path} was drawn with {key}={record.get(key)!r}, this run has {value!r}: "
                "use another workdir, or delete the file to draw the subset again"
            )
    return ids


def read_name_list(path: str) -> tuple[list[str], str]:
    """(the file names listed in `path`, one a line, blank lines skipped; sha256 of its bytes)."""
    path = fileio.absolute(path)
    help_ = ("pass --config.label_subset_file=PATH of a text file with one image file name per "
             "line (e.g. google-research/simclr's imagenet_subsets/1percent.txt)")  # fmt: skip
    try:
        raw = fileio.read_bytes(path)
        names = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise UserError(
            f"cannot read label_subset_file {path} ({e.strerror or e}); {help_}"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"label_subset_file {path} is not UTF-8 text; {help_}") from None
    if not names:
        raise UserError(f"label_subset_file {path} lists no file names; {help_}")
    return names, hashlib.sha256(raw).hexdigest()


def _parts(name: str) -> tuple[str, ...]:
    """'a/b\\c.jpg' -> ('a', 'b', 'c.jpg'): a name's folders and basename, either separator."""
    return tuple(p for p in name.replace("\\", "/").split("/") if p)


def listed_ids(file_names: Sequence[str], listed: Sequence[str], *, where: str,
               list_path: str) -> np.ndarray:  # fmt: skip
    """Sorted int64 ids of the examples whose file names are `listed`.

    A listed name matches an example whose file name has the same basename
    ("n01440764_10026.JPEG" matches ".../train/n01440764/n01440764_10026.JPEG"); a name given
    with folders ("n01440764/n01440764_10026.JPEG") must match those trailing folders too, which
    tells apart files of one basename in different folders. Repeated lines count once.

    Args:
        file_names: the split's file names or paths, one per example (`Source.file_names`).
        listed: the names to select.
        where: the split, for messages; list_path: the list, for messages.

    Raises:
        UserError: a listed name matches no example, or more than one.
    """
    by_basename: dict[str, list[int]] = {}
    for i, name in enumerate(file_names):
        by_basename.setdefault(os.path.basename(name.replace("\\", "/")), []).append(i)
    ids, missing, ambiguous = [], [], []
    for name in dict.fromkeys(listed):
        want = _parts(name)
        candidates = by_basename.get(want[-1], ()) if want else ()
        found = [i for i in candidates if _parts(file_names[i])[-len(want) :] == want]
        if not found:
            missing.append(name)
        elif len(found) > 1:
            ambiguous.append(f"{name} ({len(found)} files, e.g. {file_names[found[0]]})")
        else:
            ids.append(found[0])
    if missing:
        raise UserError(
            f"{len(missing)} of the {len(set(listed))} file names in label_subset_file "
            f"{list_path} are not in {where} ({len(file_names)} images), e.g. "
            f"{', '.join(missing[:3])}; use the list made for this dataset's train split "
            "(names are matched by basename)"
        )
    if ambiguous:
        raise UserError(
            f"{len(ambiguous)} file names in label_subset_file {list_path} match more than one "
            f"image of {where}: {'; '.join(ambiguous[:3])}; write those lines with their "
            "folder (class/name.jpg)"
        )
    return np.sort(np.asarray(ids, np.int64))


TRAIN_SUBSET_FILE = "train_subset.json"
# label_fraction must agree with a label_subset_file's share of the train split this closely
# (relative): 0.01 for SimCLR's 1percent.txt (12,811 of 1,281,167 images), 0.1 for 10percent.txt.
FRACTION_TOLERANCE = 0.05


def labelled_train_subset(source, *, fraction: float, seed: int, workdir: str,
                          subset_file: str = ""):  # fmt: skip
    """(the Source of the labelled subset, its ids, facts to save or None) for a train split.

    The ids are read back from workdir/train_subset.json when an earlier run of this workdir
    wrote them (resume), else drawn class-balanced from (seed, fraction), or, with
    `subset_file`, the examples that file lists by name (`listed_ids`); they are returned with
    the facts that define them; the caller saves those with `save_subset` once the workdir is
    ready, so the ids written are the ids used.

    With a subset file the file decides the examples, and `fraction` must state its share of
    the split (to within FRACTION_TOLERANCE of it, so results.json's label_fraction is true);
    the seed plays no part. The file's path and the sha256 of its bytes are saved, and a resume
    whose file has other contents is refused.
    """
    if subset_file:
        return _listed_train_subset(source, fraction=fraction, workdir=workdir,
                                    subset_file=subset_file)  # fmt: skip
    if source.labels is None:
        raise UserError(
            f"{source.name} cannot list its labels without reading every image; use a demo, "
            "imagefolder or TFDS dataset for label_fraction < 1"
        )
    facts = dict(source=source.name, split_examples=int(source.num_examples),
                 label_fraction=float(fraction), seed=int(seed))  # fmt: skip
    path = fileio.join(workdir, TRAIN_SUBSET_FILE)
    if fileio.exists(path):
        ids, new = load_subset(path, **facts), False
    else:
        size = subset_size(int(np.sum(source.labels >= 0)), fraction=fraction,
                           num_classes=source.num_classes)  # fmt: skip
        ids, new = class_balanced_subset(source.labels, size=size, seed=seed), True
    name = f"{source.name}[{fraction:.3g} labelled, seed {seed}]"
    return source.take(ids, name), ids, facts if new else None


def _listed_train_subset(source, *, fraction: float, workdir: str, subset_file: str):
    """labelled_train_subset for a list of file names."""
    subset_file = fileio.absolute(subset_file)
    listed, digest = read_name_list(subset_file)
    facts = dict(source=source.name, split_examples=int(source.num_examples),
                 label_subset_sha256=digest)  # fmt: skip
    path = fileio.join(workdir, TRAIN_SUBSET_FILE)
    if fileio.exists(path):
        ids, new = load_subset(path, **facts), False
    else:
        if source.file_names is None:
            raise UserError(
                f"{source.name} does not give its images' file names, which label_subset_file "
                "needs; use imagefolder:PATH or a TFDS dataset with a file_name feature "
                "(imagenet2012), or leave label_subset_file empty to draw the subset"
            )
        ids, new = listed_ids(source.file_names, listed, where=source.name,
                              list_path=subset_file), True  # fmt: skip
        if source.labels is not None and np.any(source.labels[ids] < 0):
            raise UserError(
                f"{int(np.sum(source.labels[ids] < 0))} images listed in {subset_file} have no "
                f"label in {source.name}; fine-tuning needs class subfolders (PATH/<class>/*.jpg)"
            )
    share = len(ids) / source.num_examples
    if abs(fraction - share) > FRACTION_TOLERANCE * share:
        raise UserError(
            f"label_subset_file {subset_file} lists {len(ids)} of the {source.num_examples} "
            f"train images ({share:.3g} of them) but label_fraction={fraction}; pass "
            f"--config.label_fraction={share:.3g} (the file decides the images, label_fraction "
            "states their share)"
        )
    name = f"{source.name}[{len(ids)} labelled, listed in {fileio.basename(subset_file)}]"
    return source.take(ids, name), ids, {**facts, "label_subset_file": subset_file} if new else None
