"""Masks, LR scaling, schedule, and that every optimiser leaves BN/biases undecayed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import simclr
from ssl_jax import optim
from ssl_jax.errors import UserError
from ssl_jax.methods import get_method


@pytest.fixture(scope="module")
def params():
    config = simclr.get_config("runlocal")
    net = get_method(config).network()
    views = [jnp.zeros((2, 16, 16, 3), jnp.uint8)] * 2
    return net.init(jax.random.PRNGKey(0), views)["params"]


def test_mask_tree_excludes_biases_and_batchnorm(params):
    mask = optim.flat_mask(params)
    assert mask["backbone/conv_init/kernel"] is True
    assert mask["backbone/stage2_block1/proj/kernel"] is True
    assert mask["projector/dense1/kernel"] is True
    assert mask["projector/dense2/kernel"] is True
    assert mask["backbone/bn_init/scale"] is False
    assert mask["backbone/bn_init/bias"] is False
    assert mask["backbone/stage1_block1/bn2/scale"] is False
    assert mask["projector/bn1/scale"] is False
    assert mask["projector/dense2/bias"] is False
    # Exactly the kernels are adapted.
    for path, adapted in mask.items():
        assert adapted == path.endswith("kernel"), path


def test_learning_rate_scaling():
    assert optim.scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert optim.scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert optim.scaled_learning_rate(0.1, 512, "none") == pytest.approx(0.1)
    with pytest.raises(UserError, match="lr_scaling"):
        optim.scaled_learning_rate(0.1, 512, "cubic")


def test_warmup_then_cosine():
    schedule = optim.warmup_cosine(2.0, warmup_steps=10, total_steps=110)
    np.testing.assert_allclose(schedule(0), 0.0)
    np.testing.assert_allclose(schedule(5), 1.0, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 2.0, rtol=1e-6)
    np.testing.assert_allclose(schedule(60), 1.0, rtol=1e-5)  # half-way down the cosine
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-7)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_masked_parameters_get_no_weight_decay(name):
    """With zero gradients, only decay moves parameters: kernels move, BN and biases do not."""
    params = {
        "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
        "bn": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
    }
    tx = optim.make_optimizer(name=name, learning_rate=0.1, weight_decay=0.5, params=params)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["dense"]["kernel"]) < 1.0)
    for leaf in (new["dense"]["bias"], new["bn"]["scale"], new["bn"]["bias"]):
        np.testing.assert_array_equal(leaf, 1.0)


def test_lars_trust_ratio_is_masked():
    """LARS scales a kernel's step by ||w|| / ||g||; masked leaves take the plain lr * g step."""
    params = {"dense": {"kernel": 10 * jnp.ones((2, 2)), "bias": 10 * jnp.ones((2,))}}
    grads = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
    tx = optim.make_optimizer(
        name="lars", learning_rate=1.0, weight_decay=0.0, params=params, momentum=0.0
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["bias"], -1.0)
    # trust ratio = trust_coefficient (1e-3) * ||w|| / ||g|| = 1e-3 * 20 / 2 = 0.01
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.01, rtol=1e-5)


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="optimizer"):
        optim.make_optimizer(name="adagrad", learning_rate=0.1, weight_decay=0.0, params={})
