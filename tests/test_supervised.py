"""Fine-tuning and the augmented linear protocol (methods/supervised.py): the loss against its
formula, the frozen encoder, loading the pretrained encoder (and SimCLR v2's projector layer,
exported by pretraining runs), the labelled subset, and a fine-tuning run from the projector
layer resumed after a kill. (No 8-device check of its own: the labels are sharded like every
method's online-probe labels, which those checks cover.)"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_checks as mc
from ssl_jax import checkpoint, models
from ssl_jax.data import subsets
from ssl_jax.data.sources import from_arrays
from ssl_jax.errors import UserError
from ssl_jax.methods import StepInputs, get_method
from ssl_jax.methods.supervised import classification_metrics

SCRATCH = (("from_scratch", True),)
FROZEN = (("from_scratch", True), ("frozen_encoder", True))
LAYER = checkpoint.PROJECTOR_LAYER  # "projector_layer_1"


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


def pretrained_variables(method: str, seed: int = 0, **overrides):
    """(network, variables) of a method's tiny network, every leaf moved off its initial value
    (BatchNorm scales, offsets and statistics too), as if pretrained."""
    net = get_method(mc.tiny_config(method, **overrides)).network()
    views = [jnp.zeros((2, 16, 16, 3), jnp.uint8)]
    variables = net.init(jax.random.key(seed), views, train=False)
    rng = np.random.default_rng(seed)
    return net, jax.tree.map(
        lambda x: np.asarray(x * rng.uniform(0.5, 1.5, x.shape) + rng.uniform(0, 0.1, x.shape),
                             np.float32), variables)  # fmt: skip


@pytest.fixture(scope="module")
def simclr_export(tmp_path_factory):
    """A SimCLR v2 workdir's export as finish() writes it: encoder, spec, projector_layer_1
    (SimCLR v2's 3-layer head with a last BatchNorm)."""
    v2_head = {"projector.num_layers": 3, "projector.last_bn": True}
    net, variables = pretrained_variables("simclr", **v2_head)
    workdir = tmp_path_factory.mktemp("simclr")
    spec = {"architecture": models.architecture_spec(net.backbone), "image_size": 16,
            "feature_dim": net.backbone.feature_dim, "method": "simclr", "dataset": "demo",
            "step": 4, "epochs": 0.013}  # fmt: skip
    encoder = {name: variables[name]["backbone"] for name in ("params", "batch_stats")}
    checkpoint.export_encoder(str(workdir / "export"), spec=spec, variables=encoder,
                              projector=checkpoint.projector_layer_1(net, variables))  # fmt: skip
    return str(workdir), net, variables


def test_pretraining_exports_the_first_layer_of_its_mlp_projector(simclr_export, tmp_path):
    workdir, _, variables = simclr_export
    spec, layer = checkpoint.load_projector_layer(workdir)
    assert spec == {"in_dim": 64, "width": 64, "batch_norm": True}  # hidden_dim 0: in_dim
    params, stats = (variables[name]["projector"] for name in ("params", "batch_stats"))
    assert set(params) == {"dense1", "bn1", "dense2", "bn2", "dense3", "bn3"}
    expected = {
        "params": {k: params[k] for k in ("dense1", "bn1")},
        "batch_stats": {"bn1": stats["bn1"]},
    }
    assert_trees_equal(layer, expected)
    assert checkpoint.find_export(workdir)[1][LAYER] == spec
    checkpoint.load_encoder(workdir)  # the encoder loads as before

    # MoCo v2's head has no BatchNorm: Linear with bias -> ReLU.
    net, variables = pretrained_variables("mocov2")
    layer = checkpoint.projector_layer_1(net, variables)
    assert checkpoint.projector_layer_spec(layer) == {"in_dim": 64, "width": 32,
                                                      "batch_norm": False}  # fmt: skip
    assert jax.tree.map(np.shape, layer) == {
        "params": {"dense1": {"kernel": (64, 32), "bias": (32,)}}, "batch_stats": {}}  # fmt: skip
    path = str(tmp_path / "export")
    encoder = {name: variables[name]["backbone"] for name in ("params", "batch_stats")}
    checkpoint.export_encoder(path, spec={"architecture": {}}, variables=encoder, projector=layer)
    assert_trees_equal(checkpoint.load_projector_layer(path)[1], layer)

    # No hidden layer, no layer: a one-layer projector, a classifier on the encoder.
    one_layer = get_method(mc.tiny_config("simclr", **{"projector.num_layers": 1})).network()
    one_layer_variables = {"params": {"projector": {"dense1": {"kernel": np.zeros((64, 16))}}}}
    assert checkpoint.projector_layer_1(one_layer, one_layer_variables) is None
    assert checkpoint.projector_layer_1(mc.setup("finetune", 1, SCRATCH)[1].net, {}) is None


def test_fine_tuning_from_projector_layer_1_starts_from_the_pretrained_layer(simclr_export,
                                                                            tmp_path):  # fmt: skip
    workdir, simclr_net, variables = simclr_export
    overrides = (("pretrained", workdir), ("finetune_from", LAYER))
    _, training, fresh, _ = mc.setup("finetune", 1, overrides)
    loaded = training.method.load_pretrained(fresh)
    _, layer = checkpoint.load_projector_layer(workdir)
    for name in ("params", "batch_stats"):
        assert_trees_equal(getattr(loaded, name)["projector"], layer[name])
        assert_trees_equal(getattr(loaded, name)["backbone"], variables[name]["backbone"])
    assert not np.allclose(
        fresh.params["projector"]["dense1"]["kernel"], layer["params"]["dense1"]["kernel"]
    )
    np.testing.assert_array_equal(loaded.params["head"]["kernel"], fresh.params["head"]["kernel"])
    assert loaded.params["head"]["kernel"].shape == (64, mc.NUM_CLASSES)  # on the layer's width

    # The classifier's layer computes what the pretrained projector's first layer computed.
    views = [np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8)]
    _, inner = simclr_net.apply(variables, views, capture_intermediates=True)
    expected = jax.nn.relu(inner["intermediates"]["projector"]["bn1"]["__call__"][0])
    state = {"params": loaded.params, "batch_stats": loaded.batch_stats}
    _, inner = training.net.apply(state, views, capture_intermediates=True)
    np.testing.assert_allclose(inner["intermediates"]["projector"]["__call__"][0], expected,
                               rtol=1e-5, atol=1e-6)  # fmt: skip

    # An export without the layer (made before it was exported, or a method without an MLP
    # projector): one line that says what to do.
    no_layer = os.path.dirname(mc.random_export(str(tmp_path / "old" / "export")))
    with pytest.raises(UserError, match="no exported projector layer.*re-export.*"
                                        "finetune_from=encoder"):  # fmt: skip
        get_method(mc.tiny_config("finetune", pretrained=no_layer, finetune_from=LAYER))
    with pytest.raises(UserError, match="frozen-encoder"):
        get_method(mc.tiny_config("finetune", pretrained=workdir, finetune_from=LAYER,
                                  frozen_encoder=True))  # fmt: skip
    with pytest.raises(UserError, match="from-scratch baseline has none"):
        get_method(mc.tiny_config("finetune", from_scratch=True, finetune_from=LAYER))
    with pytest.raises(UserError, match="use encoder or projector_layer_1"):
        get_method(mc.tiny_config("finetune", pretrained=workdir, finetune_from="projector"))


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


def test_fine_tuning_from_the_projector_layer_resumes_exactly_on_its_labelled_subset(
    simclr_export, tmp_path
):
    pretrained = simclr_export[0]
    full = mc.assert_resume_reproduces_losses(
        "finetune", tmp_path, pretrained=pretrained, finetune_from=LAYER
    )
    resumed = str(tmp_path / "resumed")
    ids = [json.load(open(os.path.join(d, "train_subset.json")))["ids"] for d in (full, resumed)]
    assert ids[0] == ids[1] and len(ids[0]) == 1000  # 10% of the 10,000 demo train images
    results = [json.load(open(os.path.join(d, "results.json"))) for d in (full, resumed)]
    assert results[0]["finetune_top1"] == results[1]["finetune_top1"]
    assert (results[0]["protocol"], results[0]["label_fraction"]) == ("finetune", 0.1)
    assert (results[0]["finetune_from"], results[0]["method"]) == (LAYER, "simclr")
    assert 0 <= results[0]["finetune_top1"] <= results[0]["finetune_top5"] <= 1

    # The export is the trained classifier with its fine-tuned layer, rebuilt from the spec.
    apply_fn, variables, spec = checkpoint.load_classifier(full)
    assert spec["classifier"]["finetune_from"] == LAYER
    assert spec[LAYER] == {"in_dim": 64, "width": 64, "batch_norm": True}
    trained = checkpoint.manager(full, keep=3).restore(4)
    trained = {name: trained[name] for name in ("params", "batch_stats")}
    assert_trees_equal(variables, trained)
    pretrained_kernel = checkpoint.load_projector_layer(pretrained)[1]["params"]["dense1"]["kernel"]
    assert not np.allclose(variables["params"]["projector"]["dense1"]["kernel"], pretrained_kernel)
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8)
    logits = np.asarray(apply_fn(variables, images))
    assert logits.shape == (4, mc.NUM_CLASSES) and np.all(np.isfinite(logits))
