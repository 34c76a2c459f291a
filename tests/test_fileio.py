"""ssl_jax.fileio on a local folder and on TF's in-memory ram:// (a non-local filesystem that
rewrites and appends as remote ones do; gs:// itself: tests/test_cloud_storage.py)."""

import json
import uuid

import pytest
import tensorflow as tf

from ssl_jax import fileio
from ssl_jax.metrics_writer import MetricsWriter


@pytest.fixture(params=["local", "ram"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    path = f"ram://fileio-{uuid.uuid4().hex}"
    fileio.makedirs(path)
    return path


def test_a_rewrite_replaces_the_whole_file(folder):
    path = fileio.join(folder, "results.json")
    fileio.write_text(path, "a much longer first version")
    fileio.write_text(path, "short")
    assert fileio.read_text(path) == "short"  # TF's ram:// would append to an open-for-write
    assert fileio.listdir(folder) == ["results.json"]  # no temporary file left behind


def test_an_append_log_keeps_what_earlier_processes_wrote(folder):
    path = fileio.join(folder, "metrics.jsonl")
    for start in (0, 2):
        log = fileio.AppendLog(path)
        for step in (start + 1, start + 2):
            log.write(json.dumps({"step": step}) + "\n")
            log.flush()
        log.close()
    assert [json.loads(x)["step"] for x in fileio.read_text(path).splitlines()] == [1, 2, 3, 4]


def test_metrics_and_tensorboard_events_survive_a_restart(folder):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for step in (1, 2):
        writer = MetricsWriter(folder)
        writer.write({"step": step, "loss": 1.0 / step})
        writer.close()
    lines = fileio.read_text(fileio.join(folder, "metrics.jsonl")).splitlines()
    assert [json.loads(x)["loss"] for x in lines] == [1.0, 0.5]
    events = fileio.join(folder, "tensorboard")
    names = fileio.listdir(events)
    assert len(names) == 2  # one events file per start, as tf.summary writes them
    losses = []
    for name in names:
        local = f"/tmp/{uuid.uuid4().hex}"
        fileio.write_bytes(local, fileio.read_bytes(fileio.join(events, name)))
        for event in EventFileLoader(local).Load():
            losses += [float(tf.make_ndarray(v.tensor)) for v in event.summary.value]
        fileio.remove_tree(local)
    assert sorted(losses) == [0.5, 1.0]


def test_move_tree_and_remove_tree(folder):
    src, dst = fileio.join(folder, "a"), fileio.join(folder, "moved", "a")
    fileio.makedirs(fileio.join(src, "b"))
    fileio.write_text(fileio.join(src, "b", "c.txt"), "c")
    fileio.move_tree(src, dst)
    assert not fileio.exists(src) and fileio.read_text(fileio.join(dst, "b", "c.txt")) == "c"
    fileio.remove_tree(fileio.join(folder, "moved"))
    fileio.remove_tree(fileio.join(folder, "moved"))  # nothing there is fine
    assert not fileio.exists(fileio.join(folder, "moved"))


def test_paths_keep_their_urls():
    assert fileio.join("gs://bucket/run", "export", "encoder.json") == (
        "gs://bucket/run/export/encoder.json"
    )
    assert fileio.absolute("gs://bucket/run/") == "gs://bucket/run"
    assert fileio.absolute("runs/x").startswith("/") and fileio.is_local("runs/x")
    assert fileio.parent("gs://bucket/run/export") == "gs://bucket/run"
    assert fileio.is_object_store("gs://b/x") and not fileio.is_object_store("ram://x")
