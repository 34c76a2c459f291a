"""MoCo v3: in-batch InfoNCE against its formula, the method's 2t-scaled symmetric loss from the
network outputs, 8 devices against 1, the EMA momentum encoder and stop-gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_checks as mc
from ssl_jax import losses
from ssl_jax.methods import extra_state

B = mc.GLOBAL_BATCH
TEMPERATURE = 0.2  # configs/mocov3.py runlocal


def l2n(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def info_nce_batch_numpy(q, k, t):
    """MoCo v3 Algorithm 1: logits = q @ k.T / t over the batch, labels arange(N), mean CE."""
    logits = l2n(q) @ l2n(k).T / t  # [N, N]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    return -np.mean(np.diagonal(log_probs))


# ------------------------------------------------------------------------ the loss function


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.2), (5, 8, 1.0), (16, 4, 0.07)])
def test_info_nce_in_batch_matches_formula(n, d, t):
    rng = np.random.default_rng(n + d)
    q, k = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    got = jax.jit(losses.info_nce, static_argnums=(2, 3))(q, k, None, t)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, info_nce_batch_numpy(q, k, t), rtol=1e-5, atol=1e-6)


def test_info_nce_in_batch_closed_forms():
    t = 0.2
    constant = np.full((6, 4), 3.0)  # collapsed: every logit 1/t -> log(N)
    assert float(losses.info_nce(constant, constant, None, t)) == pytest.approx(np.log(6), rel=1e-5)
    # Orthogonal queries, each key its query's direction: logits 1/t on the diagonal, 0 elsewhere.
    q = np.eye(4, 5) * np.array([[1.0], [2.0], [0.5], [3.0]])
    got = float(losses.info_nce(q, 2.0 * q, None, t))
    assert got == pytest.approx(np.log1p(3 * np.exp(-1 / t)), rel=1e-5)
    # Batch of two, keys swapped: each query's positive is orthogonal, its negative parallel.
    q = np.eye(2, 3)
    got = float(losses.info_nce(q, q[::-1], None, t))
    assert got == pytest.approx(np.log1p(np.exp(1 / t)), rel=1e-5)


def test_info_nce_in_batch_bfloat16_gives_float32():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
    out = losses.info_nce(jnp.asarray(q, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16), None, 0.2)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, info_nce_batch_numpy(q, k, 0.2), rtol=3e-2)


def test_info_nce_in_batch_no_gradient_to_the_keys():
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    gq, gk = jax.grad(losses.info_nce, argnums=(0, 1))(q, k, None, 0.2)
    assert np.all(np.asarray(gk) == 0)
    assert np.any(np.abs(np.asarray(gq)) > 1e-3)


# ------------------------------------------------------------------------ one train step


@functools.cache
def network_outputs():
    """(q1, q2, k1, k2) of the initial state on the test batch, computed here, not by the step."""
    mesh, training, _, _ = mc.setup("mocov3", 1)
    s0 = mc.two_steps("mocov3", 8)["state0"]
    views = jax.device_get(mc.batch(mesh, len(training.recipes))["views"])
    net = training.net

    @jax.jit
    def forward(variables, target_variables, views):
        online = net.apply(variables, views, train=True, mutable=["batch_stats"])[0]
        target = net.apply(
            target_variables, views, train=True, method="target", mutable=["batch_stats"]
        )[0]
        return online["predictions"], target["projections"]

    q, k = forward({"params": s0.params, "batch_stats": s0.batch_stats}, s0.extra["target"], views)
    q, k = np.asarray(q), np.asarray(k)
    return q[:B], q[B:], k[:B], k[B:]


def test_eight_devices_equal_one():
    mc.assert_eight_devices_equal_one("mocov3")


def test_loss_is_two_t_times_the_sum_of_both_directions():
    run = mc.two_steps("mocov3", 8)
    q1, q2, k1, k2 = network_outputs()
    t = TEMPERATURE
    one_way = info_nce_batch_numpy(q1, k2, t), info_nce_batch_numpy(q2, k1, t)
    np.testing.assert_allclose(run["metrics1"]["loss"], 2 * t * sum(one_way), rtol=1e-5)
    # Without the scaling or the symmetrisation the value would be far off (a check with power).
    assert not np.isclose(run["metrics1"]["loss"], sum(one_way), rtol=1e-2)
    assert not np.isclose(run["metrics1"]["loss"], 2 * t * one_way[0], rtol=1e-2)


def test_target_is_copied_at_init_without_the_predictor():
    s0 = mc.two_steps("mocov3", 8)["state0"]
    target = s0.extra["target"]
    assert "predictor" in s0.params
    assert set(target["params"]) == {"backbone", "projector"}
    online = {k: s0.params[k] for k in ("backbone", "projector")}
    mc.assert_trees_close(target["params"], online, rtol=0, atol=0)
    assert set(target["batch_stats"]) <= {"backbone", "projector"}
    mc.assert_trees_close(
        target["batch_stats"], {k: s0.batch_stats[k] for k in target["batch_stats"]}, 0, 0
    )


def test_target_is_the_ema_of_the_new_online_parameters_on_a_cosine():
    run = mc.two_steps("mocov3", 8)
    mc.assert_ema_steps(run, lambda step: extra_state.cosine_tau(0.99, step, mc.NUM_STEPS))
    for after in ("state1", "state2"):
        # The predictor has no EMA copy.
        assert "predictor" not in run[after].extra["target"]["params"]
    assert float(run["metrics1"]["ema_tau"]) == pytest.approx(0.99, abs=1e-7)
    # Step 1 of 10 on the cosine 0.99 -> 1: 1 - 0.01 (cos(pi / 10) + 1) / 2.
    expected_tau1 = 1 - 0.01 * (np.cos(np.pi / 10) + 1) / 2
    assert float(run["metrics2"]["ema_tau"]) == pytest.approx(expected_tau1, abs=1e-7)


def test_target_keeps_its_own_batch_norm_statistics():
    run = mc.two_steps("mocov3", 8)
    s0, s1 = run["state0"], run["state1"]
    stats0 = s0.extra["target"]["batch_stats"]["backbone"]["bn_init"]["mean"]
    stats1 = s1.extra["target"]["batch_stats"]["backbone"]["bn_init"]["mean"]
    assert not np.allclose(stats0, stats1)  # its own training-mode pass updated them
    # Same parameters and batch as the online pass at step 0, so the same statistics.
    np.testing.assert_allclose(
        stats1, s1.batch_stats["backbone"]["bn_init"]["mean"], rtol=1e-5, atol=1e-6
    )


def test_stop_gradient_on_the_target_branch():
    grads = mc.loss_gradient_wrt("mocov3", "extra")
    leaves = jax.tree.leaves(grads["target"]["params"])
    assert leaves and all(np.all(np.asarray(g) == 0) for g in leaves)
