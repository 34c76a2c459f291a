"""SwAV: the Sinkhorn codes and the swapped-prediction loss, then the method's prototypes.

Checked against NumPy float64 re-implementations of the official code's loops (facebookresearch/
swav main_swav.py: `distributed_sinkhorn` and the loss loop of `train`), for the marginals,
the stop-gradient on the codes, bfloat16 inputs, and the global-batch property under a mesh of
8 simulated devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import method_checks as mc
from ssl_jax import losses, parallel
from ssl_jax.methods import StepInputs

# Jitted once per shape: one compilation instead of one per operation in eager mode.
sinkhorn = jax.jit(losses.sinkhorn, static_argnames=("iterations", "epsilon"))
swav = jax.jit(losses.swav, static_argnames=("temperature", "iterations", "epsilon"))


def sinkhorn_reference(scores, iterations, epsilon):
    """main_swav.py `distributed_sinkhorn` on one process, float64."""
    q = np.exp(np.asarray(scores, np.float64) / epsilon).T  # [P, B]
    num_prototypes, batch = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= num_prototypes
        q /= q.sum(axis=0, keepdims=True)
        q /= batch
    q *= batch
    return q.T


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def swav_reference(global_scores, local_scores, temperature, iterations, epsilon):
    """The loss loop of main_swav.py `train`, crops_for_assign = the global crops, float64."""
    crops = [np.asarray(s, np.float64) for s in global_scores]
    if local_scores is not None:
        crops += [np.asarray(s, np.float64) for s in local_scores]
    loss = 0.0
    for crop_id in range(len(global_scores)):
        q = sinkhorn_reference(crops[crop_id], iterations, epsilon)
        subloss = 0.0
        for v in np.delete(np.arange(len(crops)), crop_id):
            subloss -= np.mean(np.sum(q * log_softmax(crops[v] / temperature), axis=1))
        loss += subloss / (len(crops) - 1)
    return loss / len(global_scores)


def cosine_scores(rng, shape, dim=8):
    """Scores as SwAV computes them: l2-normalised embeddings times l2-normalised prototypes."""
    *lead, num_prototypes = shape
    z = rng.normal(size=(*lead, dim))
    c = rng.normal(size=(num_prototypes, dim))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    c /= np.linalg.norm(c, axis=-1, keepdims=True)
    return (z @ c.T).astype(np.float32)


@pytest.mark.parametrize("b,p,iterations", [(8, 5, 3), (6, 20, 1), (12, 4, 10)])
def test_sinkhorn_matches_reference(b, p, iterations):
    rng = np.random.default_rng(b + p)
    scores = cosine_scores(rng, (b, p))
    got = sinkhorn(scores, iterations=iterations)
    assert got.shape == (b, p) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, sinkhorn_reference(scores, iterations, 0.05), rtol=1e-5)
    # Other epsilons and unnormalised scores too.
    scores = rng.normal(size=(b, p)).astype(np.float32)
    got = sinkhorn(scores, iterations=iterations, epsilon=0.3)
    np.testing.assert_allclose(got, sinkhorn_reference(scores, iterations, 0.3), rtol=1e-5)


def test_sinkhorn_marginals():
    b, p = 24, 6
    scores = cosine_scores(np.random.default_rng(0), (b, p))
    # After 3 iterations the last normalisation (over prototypes) makes every row sum to 1.
    q3 = np.asarray(sinkhorn(scores))
    np.testing.assert_allclose(q3.sum(axis=1), np.ones(b), rtol=1e-6)
    assert np.all(q3 >= 0)
    # Converged: also the equipartition, every prototype gets B / P of the batch.
    q50 = np.asarray(sinkhorn(scores, iterations=50))
    np.testing.assert_allclose(q50.sum(axis=1), np.ones(b), rtol=1e-6)
    np.testing.assert_allclose(q50.sum(axis=0), np.full(p, b / p), rtol=1e-4)
    # ... which 3 iterations do not give exactly, while the reference agrees on both.
    np.testing.assert_allclose(q50, sinkhorn_reference(scores, 50, 0.05), rtol=1e-4)


def test_sinkhorn_shift_invariant_and_stable_for_wide_scores():
    rng = np.random.default_rng(1)
    # Scores on a grid of 1/64 so that the shifted scores are exact in float32: the shift then
    # tests the algorithm, not the rounding of the shifted inputs.
    scores = np.round(cosine_scores(rng, (16, 10)) * 64) / 64
    base = sinkhorn(scores)
    np.testing.assert_allclose(base, sinkhorn_reference(scores, 3, 0.05), rtol=1e-5)
    for shift in (16.0, -512.0, 1e4):
        np.testing.assert_allclose(sinkhorn(scores + shift), base, rtol=1e-6, atol=1e-9)
    # exp(scores / 0.05) overflows float32 above ~4.4 (and float64 above ~35): still finite.
    wide = 100.0 * rng.normal(size=(16, 10)).astype(np.float32)
    q = np.asarray(sinkhorn(wide))
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(q.sum(axis=1), np.ones(16), rtol=1e-5)


@pytest.mark.parametrize("num_global,num_local", [(2, 0), (2, 4), (3, 2)])
def test_swav_matches_reference(num_global, num_local):
    rng = np.random.default_rng(10 * num_global + num_local)
    b, p = 8, 7
    global_scores = cosine_scores(rng, (num_global, b, p))
    local_scores = cosine_scores(rng, (num_local, b, p)) if num_local else None
    got = swav(global_scores, local_scores)
    assert got.shape == () and got.dtype == jnp.float32
    expected = swav_reference(global_scores, local_scores, 0.1, 3, 0.05)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Non-default temperature, iterations and epsilon are passed through.
    got = swav(global_scores, local_scores, temperature=0.5, iterations=5, epsilon=0.1)
    expected = swav_reference(global_scores, local_scores, 0.5, 5, 0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_swav_uninformative_scores_give_log_p():
    scores = jnp.zeros((2, 8, 9))
    np.testing.assert_allclose(swav(scores, jnp.zeros((3, 8, 9))), np.log(9), rtol=1e-6)
    with pytest.raises(ValueError, match="2 global crops"):
        losses.swav(scores[:1], None)


def swav_with_constant_codes(codes, global_scores, local_scores, temperature):
    """The swapped prediction with codes given from outside: only the log_softmax term."""
    crops = jnp.concatenate([global_scores, local_scores])
    total = 0.0
    for i in range(len(global_scores)):
        others = [v for v in range(len(crops)) if v != i]
        for v in others:
            log_p = jax.nn.log_softmax(crops[v] / temperature, axis=-1)
            total += -jnp.mean(jnp.sum(codes[i] * log_p, axis=-1)) / len(others)
    return total / len(global_scores)


def test_swav_no_gradient_through_the_codes():
    rng = np.random.default_rng(3)
    global_scores = cosine_scores(rng, (2, 8, 6))
    local_scores = cosine_scores(rng, (3, 8, 6))
    codes = jnp.stack([sinkhorn(s) for s in global_scores])
    g_global, g_local = jax.jit(jax.grad(losses.swav, argnums=(0, 1)))(global_scores, local_scores)
    e_global, e_local = jax.jit(
        jax.grad(swav_with_constant_codes, argnums=(1, 2)), static_argnums=3
    )(codes, global_scores, local_scores, 0.1)
    assert np.abs(g_global).max() > 1e-3
    np.testing.assert_allclose(g_global, e_global, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_local, e_local, rtol=1e-5, atol=1e-7)
    # And the codes themselves carry no gradient.
    g_codes = jax.jit(jax.grad(lambda s: jnp.sum(losses.sinkhorn(s) * jnp.arange(6.0))))(
        global_scores[0]
    )
    np.testing.assert_array_equal(g_codes, 0.0)


def test_swav_bfloat16_inputs_give_finite_float32():
    rng = np.random.default_rng(4)
    global_scores = cosine_scores(rng, (2, 8, 6))
    local_scores = cosine_scores(rng, (4, 8, 6))
    base = swav(global_scores, local_scores)
    low = swav(global_scores.astype(jnp.bfloat16), local_scores.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32 and np.isfinite(low)
    np.testing.assert_allclose(low, base, rtol=2e-2)
    codes = sinkhorn(global_scores[0].astype(jnp.bfloat16))
    assert codes.dtype == jnp.float32 and np.all(np.isfinite(codes))


def test_sinkhorn_and_swav_sharded_equal_single_device():
    """The batch split over 8 devices: the global-batch sums give the 1-device values."""
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(5)
    b, p = 32, 10
    scores = cosine_scores(rng, (b, p))
    q1 = jax.jit(losses.sinkhorn)(scores)
    q8 = jax.jit(losses.sinkhorn)(jax.device_put(scores, NamedSharding(mesh, P("data"))))
    assert len(q8.sharding.device_set) == 8
    np.testing.assert_allclose(q8, q1, rtol=1e-5, atol=1e-8)

    global_scores = cosine_scores(rng, (2, b, p))
    local_scores = cosine_scores(rng, (4, b, p))
    crops_sharding = NamedSharding(mesh, P(None, "data"))
    fn = jax.jit(jax.value_and_grad(losses.swav, argnums=(0, 1)))
    v1, g1 = fn(global_scores, local_scores)
    v8, g8 = fn(
        jax.device_put(global_scores, crops_sharding), jax.device_put(local_scores, crops_sharding)
    )
    np.testing.assert_allclose(v8, v1, rtol=1e-5)
    np.testing.assert_allclose(v1, swav_reference(global_scores, local_scores, 0.1, 3, 0.05), 1e-5)
    for a, b_ in zip(g8, g1, strict=True):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-8)
    v8_none = jax.jit(losses.swav)(jax.device_put(global_scores, crops_sharding), None)
    np.testing.assert_allclose(v8_none, jax.jit(losses.swav)(global_scores, None), rtol=1e-5)


# ------------------------------------------------------------------ the method

# steps_per_epoch is 5 in method_checks: 0.2 epochs freeze the first step only.
FROZEN = (("param_groups.prototypes.frozen_epochs", 0.2),)


def unit_norm_columns(kernel):
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)


def test_prototypes_stay_unit_norm_and_are_frozen_in_the_first_epoch():
    run = mc.two_steps("swav", 1, FROZEN)
    for state in ("state0", "state1", "state2"):
        unit_norm_columns(run[state].params["prototypes"]["kernel"])
    kernels = [run[s].params["prototypes"]["kernel"] for s in ("state0", "state1", "state2")]
    np.testing.assert_allclose(kernels[1], kernels[0], rtol=1e-6, atol=1e-7)  # frozen step
    assert not np.allclose(kernels[2], kernels[1])  # then they move, and stay on the sphere
    assert not np.allclose(run["state1"].params["projector"]["dense1"]["kernel"],
                           run["state0"].params["projector"]["dense1"]["kernel"])  # fmt: skip


def test_the_method_loss_is_swav_of_its_prototype_scores():
    mesh, training, state, _ = mc.setup("swav", 1, FROZEN)
    batch = mc.batch(mesh, sizes=[r.size for r in training.recipes])
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = jax.jit(lambda v, views: training.net.apply(v, views, train=True,
                                                          mutable=["batch_stats"])[0])(
        variables, batch["views"])  # fmt: skip
    scores = np.asarray(outputs["projections"]).reshape(2, mc.GLOBAL_BATCH, -1)
    inputs = StepInputs(batch["views"], {}, jax.random.PRNGKey(0), 0, None)
    loss = training.method.loss(outputs, inputs)[0]
    np.testing.assert_allclose(loss, losses.swav(scores, None, 0.1, 3, 0.05), rtol=1e-6)
    assert np.abs(scores).max() <= 1 + 1e-5  # unit embeddings against unit prototypes
