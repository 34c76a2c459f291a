import numpy as np
import pytest

from ssl_jax.data import subsets
from ssl_jax.errors import UserError

# 10 classes of unequal size (95..140), with a few unlabelled (-1) examples mixed in.
RNG = np.random.default_rng(0)
LABELS = RNG.permutation(np.concatenate([np.full(95 + 5 * c, c) for c in range(10)] + [[-1] * 7]))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37])
def test_fraction_is_class_balanced_within_one(fraction):
    size = subsets.subset_size(np.sum(LABELS >= 0), fraction=fraction, num_classes=10)
    ids = subsets.class_balanced_subset(LABELS, size=size, seed=3)
    assert len(ids) == size == max(10, round(fraction * np.sum(LABELS >= 0)))
    counts = np.bincount(LABELS[ids], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert np.all(np.diff(ids) > 0) and ids.min() >= 0 and ids.max() < len(LABELS)  # sorted ids
    assert np.all(LABELS[ids] >= 0)


def test_per_class_counts_are_exact():
    size = subsets.subset_size(1000, per_class=5, num_classes=10)
    ids = subsets.class_balanced_subset(LABELS, size=size, seed=0)
    np.testing.assert_array_equal(np.bincount(LABELS[ids]), [5] * 10)


def test_deterministic_for_a_seed_different_across_seeds_and_sizes():
    a = subsets.class_balanced_subset(LABELS, size=50, seed=1)
    np.testing.assert_array_equal(a, subsets.class_balanced_subset(LABELS, size=50, seed=1))
    b = subsets.class_balanced_subset(LABELS, size=50, seed=2)
    assert len(np.intersect1d(a, b)) < 25  # two draws of 50 from ~1,150 share a few ids
    c = subsets.class_balanced_subset(LABELS, size=60, seed=1)
    assert not np.isin(a, c).all()  # the size is part of the stream: no accidental nesting


def test_all_labels_is_every_labelled_example_even_when_classes_differ():
    ids = subsets.class_balanced_subset(LABELS, size=int(np.sum(LABELS >= 0)), seed=0)
    np.testing.assert_array_equal(ids, np.flatnonzero(LABELS >= 0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fraction=0.0), "must be in (0, 1]"),
        (dict(fraction=1.5), "must be in (0, 1]"),
        (dict(per_class=0), "positive integer"),
        (dict(fraction=0.1, per_class=5), "exactly one"),
        (dict(), "exactly one"),
    ],
)
def test_bad_sizes_say_what_to_give(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("]", r"\]")):
        subsets.subset_size(1000, num_classes=10, **kwargs)


def test_a_class_smaller_than_its_share_is_an_error_not_a_silent_imbalance():
    with pytest.raises(UserError, match="class 0 has 95 labelled examples, fewer than its share"):
        subsets.class_balanced_subset(LABELS, size=100 * 10, seed=0)
    with pytest.raises(UserError, match="no labelled examples"):
        subsets.class_balanced_subset(np.full(5, -1), size=1, seed=0)


def test_saved_ids_are_the_ids_loaded_and_a_mismatch_is_refused(tmp_path):
    ids = subsets.class_balanced_subset(LABELS, size=30, seed=4)
    path = str(tmp_path / "labelled_subset.json")
    subsets.save_subset(path, ids, seed=4, size=30, num_examples=len(LABELS))
    np.testing.assert_array_equal(subsets.load_subset(path, seed=4, size=30), ids)
    with pytest.raises(UserError, match="was drawn with seed=4, this run has 5"):
        subsets.load_subset(path, seed=5)
    (tmp_path / "labelled_subset.json").write_text('{"ids": [1, 2')
    with pytest.raises(UserError, match="delete it to draw it again"):
        subsets.load_subset(path)
