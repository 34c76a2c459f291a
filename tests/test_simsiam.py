"""SimSiam: D(p, z) against its formula, the symmetrised loss from the network's outputs, the
stop-gradient on z, 8 devices against 1, and the predictor's constant learning rate."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_checks as mc
from ssl_jax import losses, optim


def negative_cosine_numpy(p, z):
    """D(p, z) = -1/N sum_i cos(p_i, z_i), in float64 (Chen & He 2021, Eq. 1).

    A zero row has no direction; like an l2 normalisation with an epsilon, it counts as cos 0.
    """
    p, z = np.asarray(p, np.float64), np.asarray(z, np.float64)
    dot = np.einsum("nd,nd->n", p, z)
    norms = np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return -np.mean(cos)


@pytest.mark.parametrize("n,d", [(2, 3), (7, 5), (16, 32)])
def test_negative_cosine_matches_formula(n, d):
    rng = np.random.default_rng(10 * n + d)
    p, z = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    expected = negative_cosine_numpy(p, z)
    np.testing.assert_allclose(losses.negative_cosine(p, z), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jit(losses.negative_cosine)(p, z), expected, rtol=1e-5)
    # A cosine: invariant to each row's positive scale; its value is symmetric in (p, z).
    scale = rng.uniform(0.1, 10.0, size=(n, 1))
    np.testing.assert_allclose(losses.negative_cosine(p * scale, z), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.negative_cosine(z, p), expected, rtol=1e-5)


def test_negative_cosine_degenerate_inputs():
    x = np.random.default_rng(0).normal(size=(2, 4))  # batch of 2
    assert float(losses.negative_cosine(x, x)) == pytest.approx(-1.0, abs=1e-6)  # identical
    assert float(losses.negative_cosine(x, -x)) == pytest.approx(1.0, abs=1e-6)  # opposite
    orthogonal_p, orthogonal_z = np.eye(2, 4), np.eye(4)[2:]  # rows pairwise orthogonal
    assert float(losses.negative_cosine(orthogonal_p, orthogonal_z)) == pytest.approx(0.0, abs=1e-7)
    # Half the rows identical, half opposite: -(1 + (-1)) / 2 = 0.
    assert float(losses.negative_cosine(x, x * [[1.0], [-1.0]])) == pytest.approx(0.0, abs=1e-6)
    constant = np.full((5, 3), 0.7)  # collapsed: every embedding the same -> D = -1
    assert float(losses.negative_cosine(constant, constant)) == pytest.approx(-1.0, abs=1e-6)
    # An all-zero prediction has no direction: finite, 0, and a finite gradient (no NaN).
    zero = np.zeros((2, 4))
    assert float(losses.negative_cosine(zero, x)) == 0.0
    assert np.all(np.isfinite(jax.grad(losses.negative_cosine)(zero, x)))
    out = losses.negative_cosine(jnp.asarray(x, jnp.bfloat16), jnp.asarray(-x, jnp.bfloat16))
    assert out.dtype == jnp.float32 and out.shape == ()
    assert float(out) == pytest.approx(1.0, abs=1e-2)


def test_negative_cosine_gradient_flows_to_p_only():
    rng = np.random.default_rng(1)
    n = 4
    p, z = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    grad_p, grad_z = jax.grad(losses.negative_cosine, argnums=(0, 1))(p, z)
    assert np.all(np.asarray(grad_z) == 0)  # stopgrad(z)
    # d/dp of -1/N cos(p, z) = -1/N (z_hat / |p| - (p . z_hat) p / |p|^3)
    norm_p = np.linalg.norm(p, axis=1, keepdims=True)
    z_hat = z / np.linalg.norm(z, axis=1, keepdims=True)
    dot = np.sum(p * z_hat, axis=1, keepdims=True)
    expected = -(z_hat / norm_p - dot * p / norm_p**3) / n
    np.testing.assert_allclose(grad_p, expected, rtol=1e-4, atol=1e-6)


def test_method_loss_is_the_symmetrised_negative_cosine_of_the_network_outputs():
    mesh, training, state, _ = mc.setup("simsiam", 1)
    b = mc.batch(mesh, len(training.recipes))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs, _ = training.net.apply(variables, b["views"], train=True, mutable=["batch_stats"])
    p = np.asarray(outputs["predictions"], np.float64)  # [2B, P], views stacked in order
    z = np.asarray(outputs["projections"], np.float64)
    n = mc.GLOBAL_BATCH
    assert p.shape == z.shape == (2 * n, 32)
    (p1, p2), (z1, z2) = (p[:n], p[n:]), (z[:n], z[n:])
    expected = 0.5 * negative_cosine_numpy(p1, z2) + 0.5 * negative_cosine_numpy(p2, z1)
    # The loss the trainer logged for its first step (same state, same batch).
    run = mc.two_steps("simsiam", 1)
    np.testing.assert_allclose(run["metrics1"]["loss"], expected, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(z))
    # Not the unswapped pairing (p1 with its own z1): that one is a different number.
    unswapped = 0.5 * negative_cosine_numpy(p1, z1) + 0.5 * negative_cosine_numpy(p2, z2)
    assert abs(unswapped - expected) > 1e-3


def test_stop_gradient_on_the_projections():
    grads = mc.loss_gradient_wrt("simsiam", "outputs")
    assert np.all(np.asarray(grads["projections"]) == 0)  # z enters the loss under stopgrad
    g = np.asarray(grads["predictions"])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    # Each half of p gets gradient from its own term: both halves are non-zero.
    n = mc.GLOBAL_BATCH
    assert np.abs(g[:n]).max() > 0 and np.abs(g[n:]).max() > 0


def test_eight_devices_equal_one():
    mc.assert_eight_devices_equal_one("simsiam")


def test_predictor_learning_rate_is_constant_and_the_rest_follows_the_schedule():
    total_steps, steps_per_epoch = 10, 5
    config = mc.tiny_config(
        "simsiam", optimizer="sgd", weight_decay=0.0, momentum=0.0, warmup_epochs=0.4
    )  # 2 warm-up steps
    params = mc.two_steps("simsiam", 1)["state0"].params
    assert set(params) == {"backbone", "projector", "predictor"}
    tx, schedule, peak_lr = optim.from_config(
        config, params=params, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )
    peak = 0.05 * mc.GLOBAL_BATCH / 256  # base_lr x B / 256
    assert peak_lr == pytest.approx(peak)

    def expected_lr(step):  # linear warm-up over 2 steps, then cosine to 0 at step 10
        if step < 2:
            return peak * step / 2
        return peak * 0.5 * (1 + math.cos(math.pi * (step - 2) / (total_steps - 2)))

    ones = jax.tree.map(np.ones_like, params)
    opt_state = tx.init(params)
    seen = {}
    for step in range(8):  # momentum 0: each update is -lr(step) * gradient
        updates, opt_state = tx.update(ones, opt_state, params)
        if step in (0, 1, 7):
            seen[step] = updates
    for step, updates in seen.items():
        assert float(schedule(step)) == pytest.approx(expected_lr(step), rel=1e-6)
        for part in ("backbone", "projector"):
            for leaf in jax.tree.leaves(updates[part]):
                np.testing.assert_allclose(leaf, -expected_lr(step), rtol=1e-6)
        for leaf in jax.tree.leaves(updates["predictor"]):
            np.testing.assert_allclose(leaf, -peak, rtol=1e-6)
    # The steps checked are points where the schedule is far from the constant peak.
    assert [round(expected_lr(s) / peak, 4) for s in (0, 1, 7)] == [0.0, 0.5, 0.3087]


def test_predictor_lr_multiplier_scales_only_the_predictor():
    config = mc.tiny_config("simsiam", optimizer="sgd", weight_decay=0.0, momentum=0.0)
    config.param_groups.predictor.lr_multiplier = 3.0
    params = mc.two_steps("simsiam", 1)["state0"].params
    tx, schedule, peak = optim.from_config(config, params=params, total_steps=10, steps_per_epoch=5)
    ones = jax.tree.map(np.ones_like, params)
    opt_state = tx.init(params)
    for _ in range(4):
        updates, opt_state = tx.update(ones, opt_state, params)
    lr3 = float(schedule(3))  # no warm-up: peak * 0.5 * (1 + cos(3 pi / 10))
    assert lr3 == pytest.approx(peak * 0.5 * (1 + math.cos(3 * math.pi / 10)), rel=1e-6)
    np.testing.assert_allclose(updates["backbone"]["conv_init"]["kernel"], -lr3, rtol=1e-6)
    for leaf in jax.tree.leaves(updates["predictor"]):
        np.testing.assert_allclose(leaf, -3.0 * peak, rtol=1e-6)
