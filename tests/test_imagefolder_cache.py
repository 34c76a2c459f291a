"""Image folders at scale: the scan cached by listing, and files that break at read time."""

import io
import logging
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssl_jax import data
from ssl_jax.data.sources import imagefolder

GRAY = imagefolder.FALLBACK_SIDE


def _jpeg(seed, side=16):
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _make_folder(root, per_class=6, classes=("a", "b"), bad=("a/bad.jpg",)):
    """root/train/<class>/<i>.jpg, random 16 px JPEGs, plus truncated files named in `bad`."""
    for c, name in enumerate(classes):
        os.makedirs(root / "train" / name, exist_ok=True)
        for i in range(per_class):
            (root / "train" / name / f"{i}.jpg").write_bytes(_jpeg(100 * c + i))
    for rel in bad:
        (root / "train" / rel).write_bytes(_jpeg(999)[:60])
    return f"imagefolder:{root}"


@pytest.fixture
def scans(monkeypatch):
    """Counts the full decoding scans (calls of _check_readable) and the files they decode."""
    counts = {"calls": 0, "files": 0}
    check = imagefolder._check_readable

    def counting(paths):
        counts["calls"] += 1
        counts["files"] += len(paths)
        return check(paths)

    monkeypatch.setattr(imagefolder, "_check_readable", counting)
    return counts


def _cache_files(cache):
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def _same_bytes_and_mtime(path, contents):
    """Rewrites a file keeping its size and mtime: invisible to the listing key."""
    st = os.stat(path)
    assert len(contents) == st.st_size
    with open(path, "wb") as f:
        f.write(contents)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_restart_decodes_nothing_and_keeps_the_file_list(tmp_path, scans, caplog):
    dataset, cache = _make_folder(tmp_path), str(tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        first = data.get_source(dataset, "train", cache_dir=cache, file_names=True)
    assert scans == {"calls": 1, "files": 13} and first.skipped == 1
    (name,) = _cache_files(cache)  # written atomically: no .tmp file left
    assert name.startswith("imagefolder_") and name.endswith(".json")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        second = data.get_source(dataset, "train", cache_dir=cache, file_names=True)
    assert scans["calls"] == 1  # nothing decoded
    assert "Skipped 1 unreadable" in caplog.text and "bad.jpg" in caplog.text  # still told
    assert (second.num_examples, second.skipped, second.class_names) == (12, 1, ("a", "b"))
    assert second.file_names == first.file_names
    np.testing.assert_array_equal(second.labels, first.labels)
    np.testing.assert_array_equal(second.labels, [0] * 6 + [1] * 6)

    # Break a listed file without changing its size or mtime: the cached scan still lists it
    # (proof that the restart did not decode it), and reading it gives the fallback, counted.
    victim = os.path.join(str(tmp_path), "train", "b", "2.jpg")
    _same_bytes_and_mtime(victim, b"\0" * os.path.getsize(victim))
    third = data.get_source(dataset, "train", cache_dir=cache, file_names=True)
    assert scans["calls"] == 1 and third.file_names == first.file_names
    i = third.file_names.index(victim)
    image, label = third.read(tf.constant(i, tf.int64))
    assert image.shape == (GRAY, GRAY, 3) and np.all(image.numpy() == 128) and int(label) == 1
    assert (third.reader.failed_reads, third.reader.failed_files) == (1, (victim,))
    assert third.read(tf.constant(0, tf.int64))[0].shape == (16, 16, 3)  # the others decode
    assert third.reader.failed_reads == 1
    os.remove(third.file_names[0])  # deleted while running: read_file's NotFound, caught alike
    assert np.all(third.read(tf.constant(0, tf.int64))[0].numpy() == 128)
    assert third.reader.failed_files == tuple(sorted([victim, third.file_names[0]]))


@pytest.mark.parametrize("change", ["add", "remove", "touch", "rewrite"])
def test_a_changed_listing_is_scanned_again(tmp_path, scans, change):
    dataset, cache = _make_folder(tmp_path, bad=()), str(tmp_path / "cache")
    assert data.get_source(dataset, "train", cache_dir=cache).num_examples == 12
    target = tmp_path / "train" / "b" / "5.jpg"
    if change == "add":
        (tmp_path / "train" / "b" / "6.jpg").write_bytes(_jpeg(7))
    elif change == "remove":
        target.unlink()
    elif change == "touch":  # same bytes, new mtime
        os.utime(target, ns=(0, os.stat(target).st_mtime_ns + 10**9))
    else:  # truncated in place, within the same second: the size tells
        st = os.stat(target)
        target.write_bytes(target.read_bytes()[:50])
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = data.get_source(dataset, "train", cache_dir=cache)
    assert scans["calls"] == 2
    expected = {"add": (13, 0), "remove": (11, 0), "touch": (12, 0), "rewrite": (11, 1)}[change]
    assert (again.num_examples, again.skipped) == expected
    assert len(_cache_files(cache)) == 2  # one per listing
    data.get_source(dataset, "train", cache_dir=cache)
    assert scans["calls"] == 2  # the new listing's scan is reused


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(tmp_path, scans, caplog):
    dataset, cache = _make_folder(tmp_path), str(tmp_path / "cache")
    reference = data.get_source(dataset, "train", cache_dir=cache, file_names=True)
    (name,) = _cache_files(cache)
    path = os.path.join(cache, name)
    valid = open(path, "rb").read()
    wrong_folder = valid.replace(b'"folder": "', b'"folder": "/elsewhere')
    not_listed = valid.replace(b'"unreadable": [', b'"unreadable": [\n  "a/zzz.jpg",')
    broken = [valid[: len(valid) // 2], b"\0\xff", b"[]", wrong_folder, not_listed]
    for calls, garbage in enumerate(broken, 2):
        with open(path, "wb") as f:
            f.write(garbage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            source = data.get_source(dataset, "train", cache_dir=cache, file_names=True)
        assert "Ignoring the scan cache" in caplog.text and name in caplog.text
        assert scans["calls"] == calls and source.file_names == reference.file_names
        assert open(path, "rb").read() == valid  # rebuilt, byte for byte
    # A writer killed before its rename leaves only a .tmp file, which is never read.
    os.rename(path, path + ".tmp-killed")
    data.get_source(dataset, "train", cache_dir=cache)
    assert scans["calls"] == 7 and open(path, "rb").read() == valid


def test_an_unwritable_cache_dir_only_warns(tmp_path, scans, caplog):
    dataset = _make_folder(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        source = data.get_source(dataset, "train", cache_dir=str(tmp_path / "file" / "cache"))
    assert source.num_examples == 12 and "Could not write the scan cache" in caplog.text


def test_without_cache_dir_every_open_scans_and_writes_nothing(tmp_path, scans):
    dataset = _make_folder(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    sources = [data.get_source(dataset, "train", file_names=True) for _ in range(2)]
    assert scans == {"calls": 2, "files": 26}
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    # Today's file list: os.walk order, class folders sorted, the unreadable file dropped.
    expected = [
        os.path.join(root, f)
        for c in ("a", "b")
        for root, _, files in os.walk(tmp_path / "train" / c)
        for f in sorted(files)
        if f != "bad.jpg"
    ]
    assert list(sources[0].file_names) == list(sources[1].file_names) == expected
    assert sources[0].skipped == 1


def test_a_file_broken_at_read_time_gives_the_same_batches_everywhere(tmp_path, caplog):
    """Deterministic substitution: 1 host = 2 hosts, resumed = uninterrupted, no crash."""
    dataset, cache = _make_folder(tmp_path, per_class=8, bad=()), str(tmp_path / "cache")
    hosts = [data.get_source(dataset, "train", cache_dir=cache, file_names=True) for _ in range(3)]
    victim = hosts[0].file_names[5]  # example 5, label 0
    # It rots after the scan (same size and mtime, as bit rot): the restart's source, opened
    # now, reuses the cached scan and lists it too.
    _same_bytes_and_mtime(victim, b"\xff" * os.path.getsize(victim))
    hosts.append(data.get_source(dataset, "train", cache_dir=cache))

    def batches(source, steps, **kwargs):
        recipes = [dict(size=16), dict(size=16)]
        it = data.train_batches(source, recipes=recipes, global_batch=8, seed=3, **kwargs)
        return [next(it) for _ in range(steps)]

    with caplog.at_level(logging.WARNING):
        whole = batches(hosts[0], 4)  # 2 epochs of 2 steps: example 5 is read twice
        shares = [batches(hosts[p + 1], 4, process_index=p, process_count=2) for p in (0, 1)]
        resumed = batches(hosts[3], 1, start_step=3)
    for step, batch in enumerate(whole):
        for key in ("label", "index"):
            joined = np.concatenate([shares[0][step][key], shares[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key])
        for v in range(2):
            joined = np.concatenate([shares[0][step]["views"][v], shares[1][step]["views"][v]])
            np.testing.assert_array_equal(joined, batch["views"][v])
    for key in ("label", "index"):
        np.testing.assert_array_equal(resumed[0][key], whole[3][key])
    for v in range(2):
        np.testing.assert_array_equal(resumed[0]["views"][v], whole[3]["views"][v])

    index = np.concatenate([b["index"] for b in whole])  # [32]: every example twice
    views = np.concatenate([b["views"][0] for b in whole]).astype(int)  # [32, 16, 16, 3]
    label = np.concatenate([b["label"] for b in whole])
    spread = views.max(axis=(1, 2, 3)) - views.min(axis=(1, 2, 3))  # [32]
    assert sorted(index.tolist()) == sorted(list(range(16)) * 2)
    assert np.all(spread[index == 5] <= 2) and np.all(spread[index != 5] > 20)  # gray, augmented
    assert np.all(label[index == 5] == 0)
    assert hosts[0].reader.failed_files == (victim,) and hosts[0].reader.failed_reads >= 2
    assert all(h.reader.failed_files in ((), (victim,)) for h in hosts)
    warned = sum(bool(h.reader.failed_files) for h in hosts)  # each source warns once
    assert warned >= 2 and caplog.text.count(f"Could not read {victim}") == warned
    # Evaluation reads the same way.
    batch = next(data.eval_batches(hosts[0], image_size=8, batch_size=16))
    assert np.all(np.abs(batch["image"][5].astype(int) - 128) <= 1) and batch["mask"].all()


def test_a_non_local_folder_and_cache(scans):
    """Any tf.io.gfile filesystem (here TF's in-memory ram://) lists, caches and reads."""
    root = f"ram://folder-{uuid.uuid4().hex}"
    for c in ("a", "b"):
        tf.io.gfile.makedirs(f"{root}/train/{c}")  # ram:// lists only folders made so
        for i in range(3):
            with tf.io.gfile.GFile(f"{root}/train/{c}/{i}.jpg", "wb") as f:
                f.write(_jpeg(10 * ord(c) + i))
    cache = f"{root}-cache"
    first = data.get_source(f"imagefolder:{root}", "train", cache_dir=cache)
    second = data.get_source(f"imagefolder:{root}/", "train", cache_dir=cache, file_names=True)
    assert scans["calls"] == 1 and len(tf.io.gfile.listdir(cache)) == 1
    assert first.num_examples == second.num_examples == 6 and second.class_names == ("a", "b")
    assert second.file_names[3] == f"{root}/train/b/0.jpg"
    assert second.read(tf.constant(3, tf.int64))[0].shape == (16, 16, 3)
