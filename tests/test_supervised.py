"""Fine-tuning and the augmented linear protocol (methods/supervised.py): the loss against its
formula, the frozen encoder, loading the pretrained encoder, the labelled subset, and a
fine-tuning run resumed after a kill. (No 8-device check of its own: the labels are sharded
like every method's online-probe labels, which those checks cover.)"""

import json
import os

import jax
import numpy as np
import pytest

import method_checks as mc
from ssl_jax import checkpoint
from ssl_jax.data import subsets
from ssl_jax.data.sources import from_arrays
from ssl_jax.errors import UserError
from ssl_jax.methods import StepInputs, get_method
from ssl_jax.methods.supervised import classification_metrics

SCRATCH = (("from_scratch", True),)
FROZEN = (("from_scratch", True), ("frozen_encoder", True))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_loss_is_the_cross_entropy_of_every_view_against_its_image_label():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 4)).astype(np.float32), np.array([0, 3, 1, 1, 2, 0])
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    expected = -np.mean(log_probs[np.arange(6), labels])
    loss, metrics = classification_metrics(logits, labels)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(metrics["train_top1"]) == pytest.approx(np.mean(np.argmax(logits, 1) == labels))

    # Two views of 3 images: view-major rows, each image's label for both of its views.
    method = mc.setup("finetune", 1, SCRATCH)[1].method
    views = [np.zeros((3, 16, 16, 3), np.uint8)] * 2
    inputs = StepInputs(views, {}, jax.random.key(0), 0, None, labels=labels[:3])
    loss2 = method.loss({"logits": logits}, inputs)[0]
    np.testing.assert_allclose(loss2, classification_metrics(logits, np.tile(labels[:3], 2))[0])


def test_frozen_encoder_never_changes_and_the_linear_layer_learns():
    run = mc.two_steps("finetune", 1, FROZEN)
    for name in ("params", "batch_stats"):
        assert_trees_equal(getattr(run["state0"], name)["backbone"],
                           getattr(run["state2"], name)["backbone"])  # fmt: skip
    head0, head2 = run["state0"].params["head"], run["state2"].params["head"]
    assert not np.allclose(head0["kernel"], head2["kernel"])
    assert run["metrics2"]["loss"] < run["metrics1"]["loss"]  # the same batch twice
    # The frozen part has no optimiser state: nothing to store for parameters that never move.
    sizes = [x.size for x in jax.tree.leaves(run["state0"].opt_state)]
    assert sum(sizes) < sum(x.size for x in jax.tree.leaves(run["state0"].params["backbone"]))

    # Fine-tuning moves the encoder.
    tuned = mc.two_steps("finetune", 1, SCRATCH)
    moved = [not np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(tuned["state0"].params["backbone"]),
        jax.tree.leaves(tuned["state2"].params["backbone"]), strict=True)]  # fmt: skip
    assert sum(moved) > len(moved) // 2


def test_the_fresh_state_holds_the_pretrained_encoder(tmp_path):
    export = mc.random_export(str(tmp_path / "export"))
    # The state of the tiny from-scratch setup, filled by a method configured with the export.
    fresh = mc.setup("finetune", 1, SCRATCH)[2]
    method = get_method(mc.tiny_config("finetune", pretrained=str(tmp_path)), num_classes=10)
    loaded = method.load_pretrained(fresh)
    _, exported = checkpoint.load_encoder(export)
    for name in ("params", "batch_stats"):
        assert_trees_equal(getattr(loaded, name)["backbone"], exported[name])
    np.testing.assert_array_equal(loaded.params["head"]["kernel"], fresh.params["head"]["kernel"])

    # Another architecture than the export's: one line that says which settings to pass.
    with pytest.raises(UserError, match="--config.model.width=0.125"):
        get_method(mc.tiny_config("finetune", pretrained=str(tmp_path), **{"model.width": 0.25}))
    with pytest.raises(UserError, match="from_scratch=True for the supervised baseline"):
        get_method(mc.tiny_config("finetune"))  # neither pretrained nor from scratch


def test_labelled_subset_is_balanced_read_back_on_resume_and_is_what_is_read(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)[rng.permutation(300)]
    source = from_arrays("tiny", rng.integers(0, 256, (300, 4, 4, 3)), labels)
    sub, ids, facts = subsets.labelled_train_subset(
        source, fraction=0.1, seed=3, workdir=str(tmp_path)
    )
    assert sub.num_examples == len(ids) == 30 and facts["label_fraction"] == 0.1
    np.testing.assert_array_equal(np.bincount(labels[ids]), np.full(10, 3))
    np.testing.assert_array_equal(sub.labels, labels[ids])
    for i in (0, 17, 29):  # example i of the subset is example ids[i] of the split
        image, label = sub.read(i)
        expected_image, expected_label = source.read(int(ids[i]))
        np.testing.assert_array_equal(image, expected_image)
        assert int(label) == int(expected_label) == labels[ids[i]]

    subsets.save_subset(str(tmp_path / subsets.TRAIN_SUBSET_FILE), ids, **facts)
    _, again, new = subsets.labelled_train_subset(
        source, fraction=0.1, seed=3, workdir=str(tmp_path)
    )
    assert new is None and np.array_equal(again, ids)  # read back, not drawn again
    other = subsets.labelled_train_subset(source, fraction=0.1, seed=4, workdir=str(tmp_path / "x"))
    assert not np.array_equal(other[1], ids)
    with pytest.raises(UserError, match="was drawn with seed=3"):
        subsets.labelled_train_subset(source, fraction=0.1, seed=4, workdir=str(tmp_path))


def test_fine_tuning_resumes_exactly_on_its_labelled_subset(tmp_path):
    export = mc.random_export(str(tmp_path / "pretrained" / "export"))
    full = mc.assert_resume_reproduces_losses(
        "finetune", tmp_path, pretrained=os.path.dirname(export)
    )
    resumed = str(tmp_path / "resumed")
    ids = [json.load(open(os.path.join(d, "train_subset.json")))["ids"] for d in (full, resumed)]
    assert ids[0] == ids[1] and len(ids[0]) == 1000  # 10% of the 10,000 demo train images
    results = [json.load(open(os.path.join(d, "results.json"))) for d in (full, resumed)]
    assert results[0]["finetune_top1"] == results[1]["finetune_top1"]
    assert (results[0]["protocol"], results[0]["label_fraction"]) == ("finetune", 0.1)
    assert 0 <= results[0]["finetune_top1"] <= results[0]["finetune_top5"] <= 1
