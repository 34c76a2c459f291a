"""Distillation (methods/distill.py): the loss against SimCLR v2's formula, the frozen teacher
in the state, and a run through the command line from an exported classifier."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import method_checks as mc
from numpy_reference import cross_entropy, softmax
from ssl_jax import checkpoint, data, losses, parallel
from ssl_jax.data import subsets
from ssl_jax.data.sources.base import from_arrays
from ssl_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def distillation_numpy(student, teacher, tau):
    return -np.mean(np.sum(softmax(teacher / tau) * np.log(softmax(student / tau)), axis=1))


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_loss_matches_formula_and_is_smallest_at_the_teachers_distribution(tau):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)) * 3
    np.testing.assert_allclose(
        losses.distillation(student, teacher, tau), distillation_numpy(student, teacher, tau),
        rtol=1e-5)  # fmt: skip
    # No gradient reaches the teacher; the student's gradient vanishes where it equals it.
    grad_t = jax.grad(lambda t: losses.distillation(jnp.asarray(student), t, tau))(teacher)
    assert np.all(np.asarray(grad_t) == 0)
    grad_s = jax.grad(lambda s: losses.distillation(s, jnp.asarray(teacher), tau))(teacher)
    np.testing.assert_allclose(grad_s, 0, atol=1e-6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A classifier exported as a fine-tuning run exports it (random encoder and head)."""
    path = str(tmp_path_factory.mktemp("teacher") / "export")
    mc.random_export(path)
    _, spec = checkpoint.find_export(path)
    _, variables = checkpoint.load_encoder(path)
    rng = np.random.default_rng(1)
    head = {"params": {"kernel": rng.normal(size=(64, 10)).astype(np.float32),
                       "bias": np.zeros(10, np.float32)}}  # fmt: skip
    spec = {
        **spec,
        "method": "supervised",
        "classifier": {"num_classes": 10, "top1": 0.25, "label_fraction": 0.1},
    }
    checkpoint.export_encoder(path, spec=spec, variables=variables, head=head)
    return os.path.dirname(path)  # the run's workdir: its export/ is found


def test_the_teacher_is_loaded_frozen_and_in_inference_mode(teacher):
    mesh, training, state, step = mc.setup("distill", 1, (("teacher", teacher),))
    method = training.method
    state = method.load_pretrained(state)
    apply_fn, variables, _ = checkpoint.load_classifier(teacher)
    for a, b in zip(jax.tree.leaves(state.extra["teacher"]), jax.tree.leaves(variables),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    batch = mc.batch(mesh, num_views=1)
    after, metrics = step(state, batch)
    after, _ = step(after, batch)
    for a, b in zip(jax.tree.leaves(after.extra["teacher"]), jax.tree.leaves(variables),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)  # never trained, BatchNorm statistics untouched
    # The loss is the formula on the teacher's inference-mode logits of the same views.
    student = training.net.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["views"], train=True,
        mutable=["batch_stats"])[0]["logits"]  # fmt: skip
    teacher_logits = apply_fn(variables, batch["views"][0])
    expected = distillation_numpy(np.asarray(student), np.asarray(teacher_logits), 1.0)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-4)


def test_the_labelled_loss_weighs_cross_entropy_on_the_labelled_examples_only(teacher):
    weight = 0.25
    mesh, training, state, step = mc.setup(
        "distill", 1, (("teacher", teacher), ("distill_label_weight", weight)))  # fmt: skip
    state = training.method.load_pretrained(state)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, mc.NUM_CLASSES, mc.GLOBAL_BATCH).astype(np.int32)
    labels[::3] = -1  # unlabelled: outside the teacher's subset
    views = [rng.integers(0, 256, (mc.GLOBAL_BATCH, 16, 16, 3), dtype=np.uint8)]
    batch = parallel.to_global({"views": views, "label": labels}, mesh)
    _, metrics = step(state, batch)
    student = np.asarray(training.net.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["views"], train=True,
        mutable=["batch_stats"])[0]["logits"])  # fmt: skip
    apply_fn, variables, _ = checkpoint.load_classifier(teacher)
    teacher_logits = np.asarray(apply_fn(variables, batch["views"][0]))
    distill = distillation_numpy(student, teacher_logits, 1.0)
    labelled = labels >= 0
    supervised = cross_entropy(student[labelled], labels[labelled]).mean()
    np.testing.assert_allclose(metrics["distill_loss"], distill, rtol=1e-4)
    np.testing.assert_allclose(metrics["labelled_loss"], supervised, rtol=1e-4)
    np.testing.assert_allclose(metrics["labelled_share"], labelled.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], (1 - weight) * distill + weight * supervised,
                               rtol=1e-4)  # fmt: skip


def test_keep_labels_unlabels_every_other_example_on_both_read_paths():
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    source = from_arrays("toy", images, np.array([0, 1, 2, 0, 1, 2]))
    kept = source.keep_labels(np.array([1, 4]), "toy[2 labelled]")
    assert kept.num_examples == 6 and kept.num_classes == 3
    np.testing.assert_array_equal(kept.labels, [-1, 1, -1, -1, 1, -1])
    read = [int(kept.read(np.int64(i))[1]) for i in range(6)]
    assert read == [-1, 1, -1, -1, 1, -1]
    np.testing.assert_array_equal(kept.read(np.int64(4))[0], images[4])
    # A Source read in batches (fetch + decode) gets the same labels.
    batched = dataclasses.replace(
        source,
        fetch=lambda idx: (tf.gather(images, idx), tf.gather(source.labels, idx)),
        decode=lambda image, label: (image, label),
    ).keep_labels(np.array([1, 4]), "toy[2 labelled]")
    image_rows, label_rows, keep = batched.fetch(tf.constant([0, 1, 4, 5], tf.int64))
    decoded = [int(batched.decode(image_rows[i], label_rows[i], keep[i])[1]) for i in range(4)]
    assert decoded == [-1, 1, 1, -1]


def run_cli(*overrides, timeout=300):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")  # fmt: skip
    config_file = os.path.join(REPO, "configs", "distill.py")
    cmd = [sys.executable, "-m", "ssl_jax.main", f"--config={config_file}:runlocal", *overrides]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_distillation_through_the_command_line(teacher, tmp_path):
    result = run_cli(f"--workdir={tmp_path}", f"--config.teacher={teacher}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "distill top-1" in result.stdout
    results = json.load(open(tmp_path / "results.json"))
    assert (results["protocol"], results["teacher"], results["teacher_top1"],
            results["teacher_label_fraction"]) == ("distill", teacher, 0.25, 0.1)  # fmt: skip
    assert 0 <= results["distill_top1"] <= results["distill_top5"] <= 1
    # The student is itself a classifier: it can teach the next student.
    _, _, spec = checkpoint.load_classifier(str(tmp_path))
    assert spec["classifier"] == {"num_classes": 10, "top1": results["distill_top1"],
                                  "label_fraction": 1.0}  # fmt: skip


def test_a_teacher_without_a_classifier_is_a_one_line_error(tmp_path):
    encoder_only = mc.random_export(str(tmp_path / "pretrained" / "export"))
    result = run_cli(f"--workdir={tmp_path / 'w'}", f"--config.teacher={encoder_only}",
                     timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "fine-tune it first" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "w")


def test_the_labelled_loss_uses_the_teachers_subset_and_resumes_exactly(teacher, tmp_path,
                                                                       capsys):  # fmt: skip
    # The teacher's workdir as a 10% fine-tuning run leaves it: a train_subset.json of the split.
    workdir = str(tmp_path / "teacher")
    shutil.copytree(teacher, workdir)
    with pytest.raises(UserError, match="needs the teacher's labelled examples"):
        mc.run_locally("distill", str(tmp_path / "no_subset"), teacher=workdir,
                       distill_label_weight=0.5)  # fmt: skip
    train = data.get_source("demo", "train")
    ids = subsets.class_balanced_subset(train.labels, size=train.num_examples // 10, seed=0)
    subsets.save_subset(os.path.join(workdir, subsets.TRAIN_SUBSET_FILE), ids, source=train.name,
                        split_examples=train.num_examples, label_fraction=0.1, seed=0)  # fmt: skip
    full = mc.assert_resume_reproduces_losses("distill", tmp_path, teacher=workdir,
                                              distill_label_weight=0.5)  # fmt: skip
    assert f"{len(ids)} labelled: the teacher's" in capsys.readouterr().out
    results = [json.load(open(os.path.join(tmp_path, d, "results.json")))
               for d in ("full", "resumed")]  # fmt: skip
    assert results[0]["distill_top1"] == results[1]["distill_top1"]
    assert results[0]["distill_label_weight"] == 0.5
    records = [json.loads(line) for line in open(os.path.join(full, "metrics.jsonl"))]
    shares = [r["labelled_share"] for r in records if "labelled_share" in r]
    assert len(shares) == 4 and max(shares) < 0.5  # about 0.1 of a batch, not all of it
