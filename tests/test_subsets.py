import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ssl_jax.data import sources, subsets
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


# ---------------------------------------------------------------- a list of file names


def _jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format="JPEG")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/<synset>/<synset>_<i>.JPEG, ImageNet style, plus dup.JPEG in both classes."""
    root = tmp_path_factory.mktemp("imagenet_like")
    for c, synset in enumerate(("n01440764", "n01443537")):
        for i in range(4):
            _jpeg(root / "train" / synset / f"{synset}_{i}.JPEG", 60 * c + 10 * i)
        _jpeg(root / "train" / synset / "dup.JPEG", 200)
    source = sources.get_source(f"imagefolder:{root}", "train", file_names=True)
    assert source.num_examples == 10 and source.file_names is not None
    return root, source


def _write_list(tmp_path, text, name="1percent.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_listed_files_are_exactly_the_subset_and_a_resume_needs_the_same_file(folder, tmp_path):
    root, source = folder
    listed = ["n01440764_2.JPEG", "n01443537/n01443537_0.JPEG", "n01443537/dup.JPEG"]
    # Blank lines, surrounding spaces and a repeated line are allowed; the repeat counts once.
    text = "\n".join(listed) + "\n\n  n01440764_2.JPEG  \n"
    subset_file = _write_list(tmp_path, text)
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    sub, ids, facts = subsets.labelled_train_subset(
        source, fraction=0.3, seed=0, workdir=workdir, subset_file=subset_file
    )
    chosen = [os.path.relpath(source.file_names[i], root / "train") for i in ids]
    assert sorted(chosen) == sorted(
        ["n01440764/n01440764_2.JPEG", "n01443537/n01443537_0.JPEG", "n01443537/dup.JPEG"]
    )
    assert sub.num_examples == 3 and list(sub.file_names) == [source.file_names[i] for i in ids]
    np.testing.assert_array_equal(sub.labels, [0, 1, 1])  # ids sorted: the class-0 file first
    image, label = sub.read(0)  # example 0 of the subset is n01440764_2.JPEG (value 20)
    assert int(label) == 0 and abs(int(np.median(image)) - 20) <= 2
    assert facts["label_subset_file"] == subset_file
    assert facts["label_subset_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert "seed" not in facts and "label_fraction" not in facts  # the file decides, not these

    subsets.save_subset(os.path.join(workdir, subsets.TRAIN_SUBSET_FILE), ids, **facts)
    _, again, new = subsets.labelled_train_subset(
        source, fraction=0.3, seed=5, workdir=workdir, subset_file=subset_file
    )
    assert new is None and np.array_equal(again, ids)  # read back; the seed plays no part
    other = _write_list(tmp_path, "n01440764_0.JPEG\nn01440764_1.JPEG\nn01440764_3.JPEG\n", "b")
    with pytest.raises(UserError, match="was drawn with label_subset_sha256=.*delete the file"):
        subsets.labelled_train_subset(
            source, fraction=0.3, seed=0, workdir=workdir, subset_file=other
        )
    with pytest.raises(UserError, match="was drawn with label_fraction=None"):  # now a draw
        subsets.labelled_train_subset(source, fraction=0.3, seed=0, workdir=workdir)


def test_label_fraction_must_state_the_files_share(folder, tmp_path):
    _, source = folder
    subset_file = _write_list(tmp_path, "n01440764_0.JPEG\nn01443537_1.JPEG\n")  # 2 of 10
    for fraction in (0.2, 0.195):  # within 5% of 0.2
        _, ids, _ = subsets.labelled_train_subset(
            source, fraction=fraction, seed=0, workdir=str(tmp_path), subset_file=subset_file
        )
        assert len(ids) == 2
    for fraction in (1.0, 0.01, 0.1):
        with pytest.raises(
            UserError, match=r"lists 2 of the 10 .* pass --config.label_fraction=0.2 "
        ):
            subsets.labelled_train_subset(
                source, fraction=fraction, seed=0, workdir=str(tmp_path), subset_file=subset_file
            )


@pytest.mark.parametrize(
    "text, message",
    [
        (None, r"cannot read label_subset_file .*/missing.txt \(No such file or directory\); pass"),
        ("\n  \n", "lists no file names; pass --config.label_subset_file=PATH"),
        (b"\xff\xfe\x00n", "is not UTF-8 text"),
        (
            "n01440764_0.JPEG\nn09999999_1.JPEG\nnot_there.jpg\nn01440764_9.JPEG\nx.png\n",
            r"4 of the 5 file names in label_subset_file .* are not in imagefolder:.*:train "
            r"\(10 images\), e.g. n09999999_1.JPEG, not_there.jpg, n01440764_9.JPEG; use the list",
        ),
        (
            "n01443537_0.JPEG\ndup.JPEG\n",
            r"1 file names .* match more than one image .*: dup.JPEG "
            r"\(2 files, e.g. .*\); write those lines with their folder",
        ),
        ("n01440764/n01443537_0.JPEG\n", r"1 of the 1 file names .* are not in"),  # wrong folder
    ],
)
def test_a_bad_list_is_a_one_line_error_that_says_what_to_do(folder, tmp_path, text, message):
    _, source = folder
    path = tmp_path / "missing.txt"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        subsets.labelled_train_subset(
            source, fraction=0.1, seed=0, workdir=str(tmp_path), subset_file=str(path)
        )
    assert "\n" not in str(error.value)


def test_a_source_without_file_names_is_refused(folder, tmp_path):
    root, _ = folder
    subset_file = _write_list(tmp_path, "n01440764_0.JPEG\n")
    no_names = [
        sources.get_source(f"imagefolder:{root}", "train"),  # file names not asked for
        sources.from_arrays("arrays", np.zeros((4, 2, 2, 3), np.uint8), np.arange(4)),
    ]
    for source in no_names:
        assert source.file_names is None
        with pytest.raises(UserError, match="does not give its images' file names.*imagenet2012"):
            subsets.labelled_train_subset(
                source, fraction=0.25, seed=0, workdir=str(tmp_path), subset_file=subset_file
            )


def test_tfds_imagenet_file_names_are_kept_when_asked_for_and_matched(tmp_path):
    names = [f"n0144076{i % 2}_{i}.JPEG" for i in range(10)]  # TFDS imagenet2012's `file_name`
    jpeg = tf.io.encode_jpeg(np.zeros((4, 4, 3), np.uint8)).numpy()

    def imagenet(self, split, decoders=None, read_config=None, **kwargs):
        features = {"image": [jpeg] * 10, "label": np.arange(10) % 2, "file_name": names}
        return tf.data.Dataset.from_tensor_slices(features)

    with tfds.testing.mock_data(as_dataset_fn=imagenet):
        plain = sources.get_source("imagenet2012", "train")
        source = sources.get_source("imagenet2012", "train", file_names=True)
    assert plain.file_names is None and source.file_names == tuple(names)
    subset_file = _write_list(tmp_path, "n01440761_9.JPEG\nn01440760_0.JPEG\n")
    sub, ids, _ = subsets.labelled_train_subset(
        source, fraction=0.2, seed=0, workdir=str(tmp_path), subset_file=subset_file
    )
    assert ids.tolist() == [0, 9] and sub.labels.tolist() == [0, 1]
