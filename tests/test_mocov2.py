"""MoCo v2: InfoNCE with a queue against its formula, 8 devices against 1, the EMA key encoder,
the FIFO queue of keys, stop-gradient, the symmetric option, config checks, resume and export."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import method_checks as mc
from numpy_reference import cross_entropy
from ssl_jax import losses
from ssl_jax.checkpoint import load_encoder
from ssl_jax.errors import UserError
from ssl_jax.methods import extra_state, get_method, network

SYMMETRIC = (("symmetric", True), ("queue_size", 64))
SHUFFLE = (("shuffle_bn", True),)
B = mc.GLOBAL_BATCH


def l2n(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def info_nce_queue_numpy(q, k, queue, t):
    """MoCo Algorithm 1: logits [q.k, q @ queue.T] / t, the positive at index 0."""
    q, k = l2n(q), l2n(k)
    positive = np.sum(q * k, axis=1, keepdims=True)  # [N, 1]
    negatives = q @ np.asarray(queue, np.float64).T  # [N, K]
    logits = np.concatenate([positive, negatives], axis=1) / t
    return cross_entropy(logits, np.zeros(len(q), int)).mean()


# ------------------------------------------------------------------------ the loss function


@pytest.mark.parametrize("n,d,k,t", [(2, 3, 4, 0.2), (5, 8, 16, 0.07), (4, 6, 32, 1.0)])
def test_info_nce_with_a_queue_matches_formula(n, d, k, t):
    rng = np.random.default_rng(n + d + k)
    q, keys, queue = rng.normal(size=(n, d)), rng.normal(size=(n, d)), l2n(rng.normal(size=(k, d)))
    got = jax.jit(losses.info_nce, static_argnums=3)(q, keys, queue, t)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, info_nce_queue_numpy(q, keys, queue, t), rtol=1e-5, atol=1e-6)


def test_info_nce_queue_closed_forms():
    t, num_neg = 0.2, 4
    rng = np.random.default_rng(0)
    # Queries in the span of the first 2 axes, keys the same directions (other lengths), a queue
    # of the orthogonal unit axes 2..5: logits [1/t, 0, ..., 0] for every query.
    q = np.zeros((3, 2 + num_neg))
    q[:, :2] = rng.normal(size=(3, 2))
    queue = np.eye(2 + num_neg)[2:]  # [K, D]
    got = float(losses.info_nce(q, 3.0 * q, queue, t))
    expected = np.log(np.exp(1 / t) + num_neg) - 1 / t  # = log(1 + K exp(-1/t))
    assert got == pytest.approx(np.log1p(num_neg * np.exp(-1 / t)), rel=1e-5)
    assert got == pytest.approx(expected, rel=1e-5)
    # Opposite keys: the positive logit is -1/t, every negative 0.
    got = float(losses.info_nce(q, -q, queue, t))
    assert got == pytest.approx(np.log(np.exp(-1 / t) + num_neg) + 1 / t, rel=1e-5)
    # Collapsed: every query, key and queue row the same direction: all logits 1/t -> log(1 + K).
    constant = np.full((5, 3), 2.0)
    queue = l2n(np.ones((num_neg, 3)))
    assert float(losses.info_nce(constant, constant, queue, t)) == pytest.approx(
        np.log(1 + num_neg), rel=1e-5
    )


def test_info_nce_queue_bfloat16_gives_float32():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    queue = l2n(rng.normal(size=(16, 8)))
    as_bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)
    out = losses.info_nce(as_bf16(q), as_bf16(k), as_bf16(queue), 0.2)
    assert out.dtype == jnp.float32
    # bf16 inputs (3 significant digits) still give the float32 value to ~1e-2.
    np.testing.assert_allclose(out, info_nce_queue_numpy(q, k, queue, 0.2), rtol=3e-2)


def test_info_nce_queue_gradient_only_reaches_the_queries():
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    queue = l2n(rng.normal(size=(8, 5)))
    gq, gk, gqueue = jax.grad(losses.info_nce, argnums=(0, 1, 2))(q, k, queue, 0.2)
    assert np.all(np.asarray(gk) == 0) and np.all(np.asarray(gqueue) == 0)
    assert np.any(np.abs(np.asarray(gq)) > 1e-3)  # the queries do get one


# ------------------------------------------------------------------------ the queue primitive


def test_enqueue_is_fifo_and_wraps_around():
    queue = {"rows": jnp.zeros((6, 2)), "ptr": jnp.zeros((), jnp.int32)}
    enqueue = jax.jit(extra_state.enqueue)
    batches = [
        np.full((2, 2), i, np.float32) + np.array([[0.0, 0.5], [0.25, 0.75]]) for i in (1, 2, 3, 4)
    ]
    ptrs, snapshots = [], []
    for b in batches:
        queue = enqueue(queue, b)
        ptrs.append(int(queue["ptr"]))
        snapshots.append(np.asarray(queue["rows"]))
    assert ptrs == [2, 4, 0, 2]
    # After three batches the queue is batches 1, 2, 3 in order.
    np.testing.assert_array_equal(snapshots[2], np.concatenate(batches[:3]))
    # The fourth overwrites the OLDEST rows (batch 1), in its own row order; 2 and 3 stay.
    np.testing.assert_array_equal(snapshots[3][0:2], batches[3])
    np.testing.assert_array_equal(snapshots[3][2:6], np.concatenate(batches[1:3]))
    # Rows are cast to the queue's dtype.
    q16 = {"rows": jnp.zeros((4, 2), jnp.float32), "ptr": jnp.asarray(2, jnp.int32)}
    out = extra_state.enqueue(q16, jnp.ones((2, 2), jnp.bfloat16))
    assert out["rows"].dtype == jnp.float32 and int(out["ptr"]) == 0
    np.testing.assert_array_equal(out["rows"], [[0, 0], [0, 0], [1, 1], [1, 1]])


def test_initial_queue_is_unit_rows_and_pointer_zero():
    run = mc.two_steps("mocov2", 8)
    queue = run["state0"].extra["queue"]
    assert queue["rows"].shape == (64, 16) and int(queue["ptr"]) == 0
    np.testing.assert_allclose(np.linalg.norm(queue["rows"], axis=1), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------ one train step


@functools.cache
def network_fns(overrides=()):
    """Jitted online and target forward passes (training mode) of the MoCo v2 network."""
    _, training, _, _ = mc.setup("mocov2", 1, overrides)
    net = training.net

    def online(variables, views):
        return net.apply(variables, views, train=True, mutable=["batch_stats"])[0]["projections"]

    def target(variables, views):
        out = net.apply(variables, views, train=True, method="target", mutable=["batch_stats"])
        return out[0]["projections"]

    return jax.jit(online), jax.jit(target)


@functools.cache
def host_views():
    mesh, training, _, _ = mc.setup("mocov2", 1)
    return [np.asarray(v) for v in jax.device_get(mc.batch(mesh, len(training.recipes))["views"])]


def keys_of(target_vars, views):
    """l2-normalised key projections of `views` from the target variables, computed here."""
    return l2n(network_fns()[1](target_vars, views))


def test_eight_devices_equal_one():
    mc.assert_eight_devices_equal_one("mocov2")


def test_loss_is_info_nce_of_view1_queries_against_view2_keys_and_the_queue():
    run = mc.two_steps("mocov2", 8)
    views = host_views()
    s0 = run["state0"]
    assert set(s0.params) == {"backbone", "projector"}  # no predictor in MoCo v2
    q = network_fns()[0]({"params": s0.params, "batch_stats": s0.batch_stats}, views[:1])
    k = keys_of(s0.extra["target"], views[1:])
    expected = info_nce_queue_numpy(q, k, s0.extra["queue"]["rows"], 0.2)
    np.testing.assert_allclose(run["metrics1"]["loss"], expected, rtol=1e-5)


def test_target_is_copied_at_init():
    s0 = mc.two_steps("mocov2", 8)["state0"]
    target = s0.extra["target"]
    assert set(target["params"]) == {"backbone", "projector"}
    mc.assert_trees_close(target["params"], s0.params, rtol=0, atol=0)
    mc.assert_trees_close(
        target["batch_stats"], {k: s0.batch_stats[k] for k in target["batch_stats"]}, 0, 0
    )


def test_target_is_the_ema_of_the_new_online_parameters():
    run = mc.two_steps("mocov2", 8)
    mc.assert_ema_steps(run, lambda step: 0.999)  # runlocal: tau_base = tau_final = 0.999
    for m in ("metrics1", "metrics2"):
        assert float(run[m]["ema_tau"]) == pytest.approx(0.999, abs=1e-7)


def test_update_extra_is_the_ema_with_constant_tau():
    """The method's update on toy trees, where 1 - tau is far above float32 rounding."""
    method = get_method(mc.tiny_config("mocov2"), total_steps=10)
    extra = {
        "target": {"params": {"backbone": {"w": jnp.zeros(3)}}, "batch_stats": {}},
        "queue": {"rows": jnp.zeros((32, 2)), "ptr": jnp.asarray(16, jnp.int32)},
    }
    params = {"backbone": {"w": jnp.full(3, 1000.0)}, "projector": {"w": jnp.ones(2)}}
    aux = {"target_batch_stats": {"bs": jnp.ones(1)}, "keys": jnp.ones((16, 2))}
    for step in (0, 5, 9):
        new = method.update_extra(extra, aux, params=params, step=jnp.asarray(step))
        np.testing.assert_allclose(new["target"]["params"]["backbone"]["w"], 1.0, rtol=1e-4)
        assert "projector" not in new["target"]["params"]  # only the target's own subtrees
        assert new["target"]["batch_stats"] is aux["target_batch_stats"]
        np.testing.assert_array_equal(new["queue"]["rows"][16:], 1.0)
        np.testing.assert_array_equal(new["queue"]["rows"][:16], 0.0)
        assert int(new["queue"]["ptr"]) == 0


def test_queue_holds_the_keys_of_the_global_batch_in_order():
    run = mc.two_steps("mocov2", 8)
    views = host_views()
    s0, s1, s2 = run["state0"], run["state1"], run["state2"]
    init = s0.extra["queue"]["rows"]
    # Keys of step k: the target BEFORE that step's EMA update, on view 2 of the batch.
    k1 = keys_of(s0.extra["target"], views[1:])
    k2 = keys_of(s1.extra["target"], views[1:])
    assert int(s1.extra["queue"]["ptr"]) == B and int(s2.extra["queue"]["ptr"]) == 2 * B
    rows1, rows2 = s1.extra["queue"]["rows"], s2.extra["queue"]["rows"]
    np.testing.assert_allclose(rows1[:B], k1, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(rows1[B:], init[B:])  # not yet written: unchanged
    np.testing.assert_array_equal(rows2[:B], rows1[:B])
    np.testing.assert_allclose(rows2[B : 2 * B], k2, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(rows2[2 * B :], init[2 * B :])
    np.testing.assert_allclose(np.linalg.norm(rows2[: 2 * B], axis=1), 1.0, rtol=1e-5)
    # The keys are in batch order: a shuffled order would not match (keys are distinct).
    assert not np.allclose(rows1[:B], k1[::-1], atol=1e-3)


def test_stop_gradient_on_the_target_and_the_queue():
    grads = mc.loss_gradient_wrt("mocov2", "extra")
    leaves = jax.tree.leaves(grads["target"]["params"]) + [grads["queue"]["rows"]]
    assert len(leaves) > 2 and all(np.all(np.asarray(g) == 0) for g in leaves)


# ------------------------------------------------------------------------ the symmetric option


def test_symmetric_eight_devices_equal_one():
    mc.assert_eight_devices_equal_one("mocov2", overrides=SYMMETRIC)


def test_symmetric_enqueues_both_views_keys_per_step():
    run = mc.two_steps("mocov2", 8, SYMMETRIC)
    views = host_views()
    s0, s1, s2 = run["state0"], run["state1"], run["state2"]
    init = s0.extra["queue"]["rows"]
    assert int(s1.extra["queue"]["ptr"]) == 2 * B
    assert int(s2.extra["queue"]["ptr"]) == 0  # 64 rows, 32 per step: wrapped
    # Keys of both views from one target pass over the global batch: [k2, k1].
    keys = keys_of(s0.extra["target"], views)
    expected = np.concatenate([keys[B:], keys[:B]])
    rows1 = s1.extra["queue"]["rows"]
    np.testing.assert_allclose(rows1[: 2 * B], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(rows1[2 * B :], init[2 * B :])
    rows2 = s2.extra["queue"]["rows"]
    np.testing.assert_array_equal(rows2[: 2 * B], rows1[: 2 * B])
    assert not np.allclose(rows2[2 * B :], init[2 * B :])
    # The loss is the mean of both directions, queries of both views through the online network.
    online = network_fns(SYMMETRIC)[0]
    queries = online({"params": s0.params, "batch_stats": s0.batch_stats}, views)
    q1, q2 = queries[:B], queries[B:]
    queue = s0.extra["queue"]["rows"]
    expected_loss = (
        info_nce_queue_numpy(q1, keys[B:], queue, 0.2)
        + info_nce_queue_numpy(q2, keys[:B], queue, 0.2)
    ) / 2
    np.testing.assert_allclose(run["metrics1"]["loss"], expected_loss, rtol=1e-5)


# ------------------------------------------------------------------------ config checks


def test_queue_size_must_be_a_multiple_of_the_keys_per_step():
    with pytest.raises(UserError, match="queue_size=100"):
        get_method(mc.tiny_config("mocov2", queue_size=100))
    # Symmetric: 2B = 32 keys per step, so 48 (a multiple of B only) is refused too.
    with pytest.raises(UserError, match="queue_size=48.*32 keys"):
        get_method(mc.tiny_config("mocov2", queue_size=48, symmetric=True))
    with pytest.raises(UserError, match="queue_size=0"):
        get_method(mc.tiny_config("mocov2", queue_size=0))
    get_method(mc.tiny_config("mocov2", queue_size=48))  # 3 x 16: fine


# ------------------------------------------------------------------------ end to end


def test_resume_reproduces_losses_and_exports_the_online_encoder(tmp_path):
    workdir = mc.assert_resume_reproduces_losses("mocov2", tmp_path)
    apply_fn, variables = load_encoder(workdir)
    # The export is the ONLINE (query) backbone of the final checkpoint, not the key encoder's.
    saved = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "4", "default"))
    mc.assert_trees_close(variables["params"], saved["params"]["backbone"], rtol=0, atol=0)
    target = saved["extra"]["target"]["params"]["backbone"]
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(variables["params"]), strict=True)
    )
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    features = apply_fn(variables, images)
    assert features.shape == (4, 64) and np.all(np.isfinite(features))


# ------------------------------------------------------------------------ MoCo's shuffling BN


def test_shuffling_bn_is_per_device_batch_norm_on_a_permuted_batch():
    """The keys equal, row for row, the target applied to each device's slice of the permuted
    batch on its own (per-device statistics), then un-permuted; they differ from global BN."""
    mesh, training, state, _ = mc.setup("mocov2", 8, SHUFFLE)
    images = mc.batch(mesh)["views"][1]
    target, rng = state.extra["target"], jax.random.PRNGKey(3)
    keys, _ = jax.jit(lambda v, x: network.shuffled_bn_target(training.net, v, x, rng, mesh))(
        target, images
    )
    apply = jax.jit(
        lambda v, x: training.net.apply(
            v, [x], train=True, method="target", mutable=["batch_stats"]
        )[0]["projections"]
    )
    perm = np.asarray(jax.random.permutation(rng, mc.GLOBAL_BATCH))
    shuffled = np.asarray(images)[perm]
    per_device = mc.GLOBAL_BATCH // 8
    slices = [apply(target, shuffled[i : i + per_device]) for i in range(0, len(perm), per_device)]
    expected = np.concatenate(slices)[np.argsort(perm)]
    np.testing.assert_allclose(keys, expected, rtol=1e-5, atol=1e-6)
    global_bn = apply(target, np.asarray(images))
    assert np.abs(np.asarray(keys) - np.asarray(global_bn)).max() > 1e-2


def test_shuffling_bn_depends_on_the_device_count_and_global_bn_does_not():
    one, eight = mc.two_steps("mocov2", 1, SHUFFLE), mc.two_steps("mocov2", 8, SHUFFLE)
    default = mc.two_steps("mocov2", 8)
    # On one device the "per-device" statistics are the global batch's: global BN's loss.
    np.testing.assert_allclose(one["metrics1"]["loss"], default["metrics1"]["loss"], rtol=1e-5)
    # On 8 devices (2 images each) the keys see other statistics: another loss.
    assert abs(float(eight["metrics1"]["loss"]) - float(one["metrics1"]["loss"])) > 1e-3
