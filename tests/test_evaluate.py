"""Tests of ssl_jax.evaluate: kNN, offline linear probe and representation-health metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssl_jax.evaluate import (
    effective_rank,
    embedding_std,
    fit_linear_probe,
    knn_accuracy,
    knn_classify,
    knn_ranked_classes,
    knn_top1,
    linear_probe_predict,
    linear_probe_top1,
)

# ----------------------------------------------------------------------------------------------
# kNN


def _numpy_knn(train, train_labels, test, k, temperature, num_classes, ranked=1):
    """Row-by-row float64 reference of the weighted kNN vote of Wu et al. 2018: the `ranked`
    classes of largest score per row (ties to the lower class), or the best one if ranked=1."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    k = min(k, len(train))
    preds = []
    for x in test:
        sim = train @ x  # [N]
        nearest = np.argsort(-sim)[:k]
        scores = np.zeros(num_classes)
        for i in nearest:
            scores[train_labels[i]] += np.exp(sim[i] / temperature)
        order = np.argsort(-scores, kind="stable")  # descending, lower class first on ties
        preds.append(order[:ranked] if ranked > 1 else int(order[0]))
    return np.array(preds)


def _random_problem(seed, n=300, m=70, d=16, classes=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    train_labels = rng.integers(0, classes, n)
    test_labels = rng.integers(0, classes, m)
    train = (centres[train_labels] + 1.5 * rng.normal(size=(n, d))).astype(np.float32)
    test = (centres[test_labels] + 1.5 * rng.normal(size=(m, d))).astype(np.float32)
    return train, train_labels, test, test_labels


@pytest.mark.parametrize("k, temperature", [(20, 0.07), (5, 0.5), (1, 0.07)])
def test_knn_matches_numpy_loop(k, temperature):
    train, train_labels, test, _ = _random_problem(0)
    expected = _numpy_knn(train, train_labels, test, k, temperature, 5)
    preds = knn_classify(train, train_labels, test, k=k, temperature=temperature, chunk_size=32)
    assert preds.dtype == jnp.int32 and preds.shape == (70,)
    np.testing.assert_array_equal(np.asarray(preds), expected)


def test_knn_temperature_decides_between_near_and_many():
    # One class-0 neighbour at cos 0.99 against two class-1 neighbours at cos 0.8 (k = 3):
    # sharp weights (t = 0.01) follow the nearest one, flat weights (t = 10) follow the majority.
    def unit(cos):
        return [cos, np.sqrt(1.0 - cos**2)]

    train = np.array([unit(0.99), unit(0.8), unit(0.8), [-1.0, 0.0]], np.float32)
    train_labels = np.array([0, 1, 1, 2])
    test = np.array([[3.0, 0.0]], np.float32)  # length 3: normalisation must not matter
    sharp = knn_classify(train, train_labels, test, k=3, temperature=0.01)
    flat = knn_classify(train, train_labels, test, k=3, temperature=10.0)
    assert int(sharp[0]) == 0
    assert int(flat[0]) == 1
    # exp(0.99 / 0.01) = 1e43 overflows float32; with tiny temperature the result is 1-NN.
    tiny = knn_classify(train, train_labels, test, k=3, temperature=1e-3)
    assert int(tiny[0]) == 0


def test_knn_chunking_invariance():
    train, train_labels, test, _ = _random_problem(1, m=53)
    reference = knn_classify(train, train_labels, test, k=10, chunk_size=1024)
    for chunk_size in (1, 7, 53, 64):
        preds = knn_classify(train, train_labels, test, k=10, chunk_size=chunk_size)
        np.testing.assert_array_equal(np.asarray(preds), np.asarray(reference))


def test_knn_k_larger_than_train_set():
    train, train_labels, test, _ = _random_problem(2, n=30, m=20)
    preds = knn_classify(train, train_labels, test, k=1000, temperature=0.2)
    expected = _numpy_knn(train, train_labels, test, 30, 0.2, 5)
    np.testing.assert_array_equal(np.asarray(preds), expected)
    np.testing.assert_array_equal(
        np.asarray(preds),
        np.asarray(knn_classify(train, train_labels, test, k=30, temperature=0.2)),
    )


def test_knn_top1_and_num_classes():
    train, train_labels, test, test_labels = _random_problem(3)
    # Each training point is its own nearest neighbour, so 1-NN on the train set is exact.
    assert knn_top1(train, train_labels, train, train_labels, k=1) == 1.0
    acc = knn_top1(train, train_labels, test, test_labels, k=20)
    expected = np.mean(_numpy_knn(train, train_labels, test, 20, 0.07, 5) == test_labels)
    assert acc == pytest.approx(expected)
    assert acc > 0.5  # well above the 0.2 chance level of these blobs
    # An explicit, larger num_classes adds empty classes that never win.
    wide = knn_classify(train, train_labels, test, k=20, num_classes=12)
    np.testing.assert_array_equal(
        np.asarray(wide), np.asarray(knn_classify(train, train_labels, test, k=20))
    )


def test_knn_ranked_classes_and_top5_match_numpy():
    train, train_labels, test, test_labels = _random_problem(4, classes=20)
    ranked = knn_ranked_classes(train, train_labels, test, k=20, temperature=0.1, chunk_size=16)
    expected = _numpy_knn(train, train_labels, test, 20, 0.1, 20, ranked=5)
    assert ranked.shape == (70, 5)
    np.testing.assert_array_equal(np.asarray(ranked), expected)
    acc = knn_accuracy(train, train_labels, test, test_labels, k=20, temperature=0.1)
    assert acc["top1"] == pytest.approx(np.mean(expected[:, 0] == test_labels))
    assert acc["top5"] == pytest.approx(np.mean(np.any(expected == test_labels[:, None], axis=1)))
    assert acc["top1"] < acc["top5"] < 1.0
    # Five classes or fewer: every class is ranked, so top-5 is certain.
    train, train_labels, test, test_labels = _random_problem(5, classes=3)
    assert knn_ranked_classes(train, train_labels, test, k=10).shape == (70, 3)
    assert knn_accuracy(train, train_labels, test, test_labels, k=10)["top5"] == 1.0


def test_knn_ties_go_to_the_lower_class():
    # Two neighbours at the same similarity, one of each class: equal scores, class 0 first.
    train = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    ranked = knn_ranked_classes(train, np.array([1, 0]), np.array([[1.0, 0.0]], np.float32), k=2)
    np.testing.assert_array_equal(np.asarray(ranked), [[0, 1]])
    assert int(knn_classify(train, np.array([1, 0]), np.array([[1.0, 0.0]]), k=2)[0]) == 0


# ----------------------------------------------------------------------------------------------
# Offline linear probe


def _blobs(seed, n, d=32, classes=4, spread=8.0):
    rng = np.random.default_rng(seed)
    centres = spread * rng.normal(size=(classes, d))
    labels = rng.integers(0, classes, n)
    feats = centres[labels] + rng.normal(size=(n, d))
    return feats.astype(np.float32), labels


def test_linear_probe_separable_blobs():
    train, train_labels = _blobs(0, 2000)
    rng = np.random.default_rng(1)
    test_labels = rng.integers(0, 4, 1000)
    centres = 8.0 * np.random.default_rng(0).normal(size=(4, 32))  # same centres as _blobs(0)
    test = (centres[test_labels] + rng.normal(size=(1000, 32))).astype(np.float32)
    acc = linear_probe_top1(train, train_labels, test, test_labels, 4, steps=300, batch_size=256)
    assert acc >= 0.99


def test_linear_probe_random_labels_is_chance():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(2000, 32)).astype(np.float32)
    test = rng.normal(size=(2000, 32)).astype(np.float32)
    train_labels = rng.integers(0, 4, 2000)
    test_labels = rng.integers(0, 4, 2000)
    acc = linear_probe_top1(train, train_labels, test, test_labels, 4, steps=300, batch_size=256)
    # Chance is 0.25; the binomial std at 2000 test points is 0.0097, so this is 5 sigma.
    assert abs(acc - 0.25) < 0.05


def test_linear_probe_standardises_features():
    train, train_labels = _blobs(3, 1000, spread=1.0)
    # An affine change of each feature dimension is undone by the standardisation.
    scale = np.geomspace(1e-3, 1e3, 32).astype(np.float32)
    shifted = train * scale + 100.0
    probe = fit_linear_probe(train, train_labels, 4, steps=200, batch_size=128)
    probe_shifted = fit_linear_probe(shifted, train_labels, 4, steps=200, batch_size=128)
    np.testing.assert_allclose(np.asarray(probe.mean), train.mean(0), rtol=1e-4, atol=1e-4)
    agree = np.mean(
        np.asarray(linear_probe_predict(probe, train))
        == np.asarray(linear_probe_predict(probe_shifted, shifted))
    )
    assert agree > 0.99


# ----------------------------------------------------------------------------------------------
# Representation health


def _numpy_embedding_std(z):
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    return np.mean(np.std(u, axis=0))


def _numpy_effective_rank(z):
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return np.exp(-np.sum(p * np.log(p)))


def test_embedding_std_isotropic_and_formula():
    z = np.random.default_rng(0).normal(size=(4096, 64)).astype(np.float32)
    value = float(jax.jit(embedding_std)(z))
    assert value == pytest.approx(_numpy_embedding_std(z.astype(np.float64)), rel=1e-5)
    assert value == pytest.approx(1.0 / np.sqrt(64), rel=0.02)


def test_embedding_std_collapse_is_zero():
    direction = np.random.default_rng(1).normal(size=(1, 32))
    scales = np.linspace(0.5, 5.0, 128)[:, None]
    z = (scales * direction).astype(np.float32)  # every row points the same way
    assert float(embedding_std(z)) == pytest.approx(0.0, abs=1e-6)


def test_effective_rank_whitened_is_full():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(256, 32))
    q, _ = np.linalg.qr(x - x.mean(0))  # orthonormal, centred columns: equal singular values
    z = (q * np.sqrt(256) + 5.0).astype(np.float32)  # an offset must not change the rank
    assert float(jax.jit(effective_rank)(z)) == pytest.approx(32.0, rel=1e-3)


def test_effective_rank_rank_one():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(128, 1)) * rng.normal(size=(1, 48)) + rng.normal(size=(1, 48))
    assert float(effective_rank(z.astype(np.float32))) == pytest.approx(1.0, abs=1e-3)
    assert float(effective_rank(jnp.zeros((16, 8)))) == 1.0


def test_effective_rank_matches_numpy():
    rng = np.random.default_rng(4)
    # Decaying spectrum, so the value is well inside (1, D).
    z = rng.normal(size=(200, 24)) * np.geomspace(1.0, 0.01, 24)
    expected = _numpy_effective_rank(z)
    assert 1.5 < expected < 20
    assert float(effective_rank(z.astype(np.float32))) == pytest.approx(expected, rel=1e-4)
    value_bf16 = effective_rank(jnp.asarray(z, jnp.bfloat16))
    assert value_bf16.dtype == jnp.float32
    assert float(value_bf16) == pytest.approx(expected, rel=0.05)


def test_health_metrics_on_sharded_global_batch():
    z = np.random.default_rng(5).normal(size=(64, 16)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(z, NamedSharding(mesh, PartitionSpec("data")))
    for fn in (embedding_std, effective_rank):
        np.testing.assert_allclose(float(jax.jit(fn)(sharded)), float(fn(z)), rtol=1e-5)


def test_eval_max_examples_takes_evenly_spaced_examples_of_every_class():
    from ssl_jax.data import sources
    from ssl_jax.evaluate import features

    # Stored class by class, as the demo set and image folders are: 0,0,...,1,1,...,4.
    labels = np.repeat(np.arange(5), 20).astype(np.int32)
    images = np.arange(100, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    source = sources.from_arrays("classes", images, labels)
    spaced = features.spaced(source, 30)  # every 4th: 25 examples
    assert spaced.num_examples == 25 and spaced.name == "classes[::4]"
    read = [spaced.read(np.int64(i)) for i in range(25)]
    assert [int(img[0, 0, 0]) for img, _ in read] == list(range(0, 100, 4))
    assert np.bincount([int(lab) for _, lab in read]).tolist() == [5] * 5
    assert features.spaced(source, 0) is source and features.spaced(source, 100) is source
