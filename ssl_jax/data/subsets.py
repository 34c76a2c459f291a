"""Labelled subsets of a train split: the 1% / 10% fine-tuning sets and the few-shot draws.

A subset is a sorted array of example ids (indices into the split), class-balanced: every class
gets the same number of examples, or one more where the total does not divide evenly. It depends
only on (labels, size, seed): the same call gives the same ids on every host and every rerun, and
another seed gives another draw. Runs write the ids they used to their workdir (`save_subset`)
and read them back on resume (`load_subset`), so a resumed run cannot draw a different subset
even if this module changes.

Papers differ here: SimCLR's ImageNet 1% / 10% files keep each class's share of the train split
(ImageNet's classes have 732 to 1,300 images), and TFDS serves them as `imagenet2012_subset/1pct`
and `/10pct`; CIFAR-10's classes are equal, so there the two conventions agree.
"""

import json
import os

import numpy as np

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
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)  # a kill mid-write leaves the old file or none, never half of one


def load_subset(path: str, **expected) -> np.ndarray:
    """The ids saved at `path`; every fact in `expected` must match what was saved."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the labelled subset {path} ({e}); delete it to draw "
                        "it again") from None  # fmt: skip
    for key, value in expected.items():
        if record.get(key) != value:
            raise UserError(
                f"{path} was drawn with {key}={record.get(key)!r}, this run has {value!r}: "
                "use another workdir, or delete the file to draw the subset again"
            )
    ids = np.asarray(record["ids"], np.int64)
    if ids.size != record.get("num_ids"):
        raise UserError(f"{path} is damaged ({ids.size} ids, {record.get('num_ids')} declared)")
    return ids


TRAIN_SUBSET_FILE = "train_subset.json"


def labelled_train_subset(source, *, fraction: float, seed: int, workdir: str):
    """(the Source of the labelled subset, its ids, facts to save or None) for a train split.

    The ids are read back from workdir/train_subset.json when an earlier run of this workdir
    wrote them (resume), else drawn class-balanced from (seed, fraction) and returned with the
    facts that define them; the caller saves those with `save_subset` once the workdir is ready,
    so the ids written are the ids used.
    """
    if source.labels is None:
        raise UserError(
            f"{source.name} cannot list its labels without reading every image; use a demo, "
            "imagefolder or TFDS dataset for label_fraction < 1"
        )
    facts = dict(source=source.name, split_examples=int(source.num_examples),
                 label_fraction=float(fraction), seed=int(seed))  # fmt: skip
    path = os.path.join(workdir, TRAIN_SUBSET_FILE)
    if os.path.exists(path):
        ids, new = load_subset(path, **facts), False
    else:
        size = subset_size(int(np.sum(source.labels >= 0)), fraction=fraction,
                           num_classes=source.num_classes)  # fmt: skip
        ids, new = class_balanced_subset(source.labels, size=size, seed=seed), True
    name = f"{source.name}[{fraction:.3g} labelled, seed {seed}]"
    return source.take(ids, name), ids, facts if new else None
