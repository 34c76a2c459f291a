"""TFDS read from array_record by index (tfds_random_access.py) against the in-memory path.

A tiny builder (40 train + 10 test random 24 px JPEGs, 3 classes, file names) is prepared twice
into a temporary data_dir, as TFRecord and as array_record, from the same generator (no network).
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ssl_jax import data
from ssl_jax.data import pipeline
from ssl_jax.errors import UserError

NAME = "ssl_jax_tiny_jpegs"
NUM_TRAIN, NUM_TEST = 40, 10


class SslJaxTinyJpegs(tfds.core.GeneratorBasedBuilder):
    """40 train / 10 test random 24 x 24 JPEGs, labels i % 3, file names "<split>_<i>.JPEG"."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["ant", "bee", "cat"]),
                "file_name": tfds.features.Text(),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {
            "train": self._generate_examples("train", NUM_TRAIN),
            "test": self._generate_examples("test", NUM_TEST),
        }

    def _generate_examples(self, split, n):
        rng = np.random.default_rng(0 if split == "train" else 1)
        for i in range(n):
            image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
            yield i, {"image": jpeg, "label": i % 3, "file_name": f"{split}_{i}.JPEG"}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """{"tfrecord": dir, "array_record": dir}, the dataset prepared in each format."""
    dirs = {}
    for file_format in ("tfrecord", "array_record"):
        path = str(tmp_path_factory.mktemp(file_format))
        SslJaxTinyJpegs(data_dir=path, file_format=file_format).download_and_prepare()
        dirs[file_format] = path
    return dirs


def _sources(data_dirs, split, **kwargs):
    memory = data.get_source(NAME, split, data_dirs["tfrecord"], **kwargs)
    random_access = data.get_source(NAME, split, data_dirs["array_record"], **kwargs)
    assert memory.fetch is None and random_access.fetch is not None  # the two paths
    return memory, random_access


def _take(iterator, steps):
    batches = [next(iterator) for _ in range(steps)]
    iterator.close()
    return batches


def test_both_preparations_give_identical_batches_per_host_and_on_resume(data_dirs):
    memory, random_access = _sources(data_dirs, "train")
    recipe = dict(size=16, blur_prob=0.5, color_jitter_prob=0.8)
    # global batch 8: 5 steps per epoch; from step 3 the three steps cross into epoch 1.
    for process_index, process_count, start_step in ((0, 1, 0), (0, 2, 3), (1, 2, 3)):
        batches = [
            _take(
                data.train_batches(
                    source,
                    recipes=[recipe, recipe],
                    global_batch=8,
                    seed=3,
                    start_step=start_step,
                    process_index=process_index,
                    process_count=process_count,
                ),
                3,
            )
            for source in (memory, random_access)
        ]
        for a, b in zip(*batches, strict=True):
            assert a["views"][0].shape == (8 // process_count, 16, 16, 3)
            np.testing.assert_array_equal(a["index"], b["index"])
            np.testing.assert_array_equal(a["label"], b["label"])
            for view_a, view_b in zip(a["views"], b["views"], strict=True):
                np.testing.assert_array_equal(view_a, view_b)
            assert not np.array_equal(a["views"][0], a["views"][1])  # two different views
    # The resumed host-1 batches are rows 4-7 of the uninterrupted run's steps 3-5.
    whole = _take(data.train_batches(random_access, recipes=[recipe], global_batch=8, seed=3), 6)
    for step, batch in zip((3, 4, 5), batches[1], strict=True):
        np.testing.assert_array_equal(batch["index"], whole[step]["index"][4:])
        np.testing.assert_array_equal(batch["views"][0], whole[step]["views"][0][4:])

    memory_test, random_access_test = _sources(data_dirs, "test")
    valid = 0
    for process_index in (0, 1):
        kwargs = dict(image_size=16, batch_size=4, process_index=process_index, process_count=2)
        a = list(data.eval_batches(memory_test, **kwargs))
        b = list(data.eval_batches(random_access_test, **kwargs))
        assert len(a) == len(b) == 3  # ceil(10 / 4), the last one padded
        for x, y in zip(a, b, strict=True):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(x[key], y[key])
            valid += int(y["mask"].sum())
    assert valid == NUM_TEST  # the two hosts' shares cover the split once


def test_random_access_reads_only_its_hosts_records_and_never_the_whole_split(
    data_dirs, monkeypatch
):
    def no_as_dataset(*args, **kwargs):
        raise AssertionError("the random-access source materialised the split (as_dataset)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", no_as_dataset)
    calls = []
    original = tfds.core.data_sources.array_record.ArrayRecordDataSource.__getitems__

    def getitems(self, keys):
        calls.append(list(keys))
        return original(self, keys)

    monkeypatch.setattr(
        tfds.core.data_sources.array_record.ArrayRecordDataSource, "__getitems__", getitems
    )
    source = data.get_source(NAME, "train", data_dirs["array_record"])
    assert calls == [] and source.num_examples == NUM_TRAIN  # nothing read up front

    batches = _take(
        data.train_batches(
            source, recipes=[dict(size=16)], global_batch=8, seed=1, process_index=1,
            process_count=2,
        ),
        2,
    )  # fmt: skip
    # Host 1's rows (4-7 of each global batch) of epochs 0 and 1 (prefetching may run ahead).
    spe = NUM_TRAIN // 8
    host_rows = {
        int(i)
        for epoch in (0, 1)
        for i in pipeline.epoch_permutation(1, epoch, NUM_TRAIN).reshape(spe, 8)[:, 4:].ravel()
    }
    fetched = [k for keys in calls for k in keys]
    assert calls and all(len(keys) == 4 for keys in calls)  # one call per host batch of 4
    assert set(fetched) <= host_rows and len(fetched) < NUM_TRAIN
    assert set(np.concatenate([b["index"] for b in batches]).tolist()) <= set(fetched)

    # Labels are read on first use only: a subset's (Source.take) from its own records, the
    # split's in one pass over all of them.
    calls.clear()
    subset = source.take(np.array([5, 17, 2]), "subset")
    assert calls == []
    subset_labels = subset.labels
    assert sorted(k for keys in calls for k in keys) == [2, 5, 17]
    calls.clear()
    labels = source.labels
    assert sorted(k for keys in calls for k in keys) == list(range(NUM_TRAIN))
    monkeypatch.undo()
    memory = data.get_source(NAME, "train", data_dirs["tfrecord"])
    np.testing.assert_array_equal(labels, memory.labels)
    np.testing.assert_array_equal(subset_labels, memory.labels[[5, 17, 2]])


def test_tfrecord_larger_than_the_ram_limit_is_one_line_saying_how_to_reprepare(data_dirs):
    tfrecord, array_record = data_dirs["tfrecord"], data_dirs["array_record"]
    with pytest.raises(UserError) as error:
        data.get_source(NAME, "train", tfrecord, ram_limit_gb=1e-6)  # 1 KB
    message = str(error.value)
    assert "\n" not in message and "data_ram_limit_gb=1e-06" in message
    assert f"tfds build {NAME} --file_format=array_record --data_dir={tfrecord}" in message
    assert "imagefolder:PATH" in message
    # Under the limit, or without one: loaded into memory; array_record: read from disk.
    assert data.get_source(NAME, "train", tfrecord, ram_limit_gb=1.0).num_examples == NUM_TRAIN
    assert data.get_source(NAME, "test", tfrecord).num_examples == NUM_TEST
    big = data.get_source(NAME, "train", array_record, ram_limit_gb=1e-6)
    assert big.fetch is not None and big.num_examples == NUM_TRAIN


def test_labels_file_names_and_subsets_come_through_both_paths(data_dirs):
    memory, random_access = _sources(data_dirs, "train", file_names=True)
    for source in (memory, random_access):
        assert source.name == f"{NAME}:train" and source.num_examples == NUM_TRAIN
        assert source.num_classes == 3 and source.class_names == ("ant", "bee", "cat")
        # TFDS shuffles at preparation; both formats keep the same order.
        assert sorted(source.file_names) == sorted(f"train_{i}.JPEG" for i in range(NUM_TRAIN))
        expected = [int(n.split("_")[1].split(".")[0]) % 3 for n in source.file_names]
        assert source.labels.tolist() == expected
    assert memory.file_names == random_access.file_names
    plain = data.get_source(NAME, "train", data_dirs["array_record"])
    assert plain.file_names is None

    # Per-example reads and a subset (Source.take) agree between the paths.
    ids = np.array([7, 0, 31])
    subsets = [s.take(ids, "subset") for s in (memory, random_access)]
    for i in range(3):
        (image_a, label_a), (image_b, label_b) = (s.read(tf.constant(i, tf.int64)) for s in subsets)
        assert image_a.shape == (24, 24, 3) and int(label_a) == int(label_b) == expected[ids[i]]
        np.testing.assert_array_equal(image_a.numpy(), image_b.numpy())
    a, b = (next(data.eval_batches(s, image_size=24, batch_size=3)) for s in subsets)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert b["label"].tolist() == [expected[i] for i in ids]
