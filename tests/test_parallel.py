"""The sharded train step on 8 devices equals the same step on 1 device for one global batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import simclr
from ssl_jax import parallel, train
from ssl_jax.errors import UserError

GLOBAL_BATCH = 16
NUM_CLASSES = 10


@functools.cache
def _setup(num_devices):
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    config = simclr.get_config("runlocal")
    config.batch_size = GLOBAL_BATCH
    training = train.build_training(
        config, mesh, num_classes=NUM_CLASSES, steps_per_epoch=5, num_steps=10
    )
    state = training.initial_state(jax.random.PRNGKey(0))
    grads = functools.partial(train.loss_and_grads, net=training.net, method=training.method)
    grad_fn = jax.jit(
        lambda s, b: grads(s, b)[1],
        in_shardings=(training.state_sharding, parallel.batch_sharded(mesh)),
    )
    # The trainer's step donates the state; these tests reuse it, so copy before each call.
    step = lambda s, b: training.step_fn(jax.tree.map(jnp.copy, s), b)  # noqa: E731
    return mesh, state, step, grad_fn


def _batch(mesh):
    rng = np.random.default_rng(0)
    host = {
        "views": [rng.integers(0, 256, (GLOBAL_BATCH, 16, 16, 3), dtype=np.uint8) for _ in "ab"],
        "label": rng.integers(0, NUM_CLASSES, (GLOBAL_BATCH,), dtype=np.int32),
    }
    return parallel.to_global(host, mesh)


def _run(num_devices):
    mesh, state, step, grad_fn = _setup(num_devices)
    batch = _batch(mesh)
    grads = grad_fn(state, batch)
    new_state, metrics = step(state, batch)
    new_state, metrics = step(new_state, batch)  # a second step sees updated BN stats and momentum
    return jax.device_get((grads, new_state, metrics)), batch["views"][0].sharding


@pytest.fixture(scope="module")
def one_and_eight():
    return _run(1), _run(8)


def test_batch_really_is_split_over_eight_devices(one_and_eight):
    (_, sharding1), (_, sharding8) = one_and_eight
    assert len(sharding1.device_set) == 1 and len(sharding8.device_set) == 8


def test_loss_metrics_and_gradients_match(one_and_eight):
    ((g1, _, m1), _), ((g8, _, m8), _) = one_and_eight
    for key in ("loss", "probe_loss", "embedding_std", "effective_rank", "lr"):
        np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
    # Gradients of size ~1e-2 differ by float32 summation order (~5e-6); a wrong batch, ~1e-1.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g8, g1)


def test_new_params_and_batch_norm_statistics_match(one_and_eight):
    ((_, s1, _), _), ((_, s8, _), _) = one_and_eight
    assert int(s8.step) == int(s1.step) == 2
    for name in ("params", "batch_stats", "opt_state", "probe_params"):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            getattr(s8, name),
            getattr(s1, name),
        )
    # BN statistics moved away from their init (mean 0): they were really computed.
    assert np.abs(s8.batch_stats["backbone"]["bn_init"]["mean"]).max() > 1e-3


def test_online_probe_never_changes_encoder_gradients():
    """The encoder's update does not depend on what the probe is taught: same batch, other
    labels -> identical network parameters and BN statistics, different probe."""
    mesh, state, step, _ = _setup(8)
    batch = _batch(mesh)
    shuffled = dict(batch, label=jnp.roll(batch["label"], 1))
    s_a, _ = step(state, batch)
    s_b, _ = step(state, shuffled)
    jax.tree.map(np.testing.assert_array_equal, s_a.params, s_b.params)
    jax.tree.map(np.testing.assert_array_equal, s_a.batch_stats, s_b.batch_stats)
    assert not np.allclose(
        s_a.probe_params["classifier"]["kernel"], s_b.probe_params["classifier"]["kernel"]
    )


def test_batch_not_divisible_by_devices_is_a_user_error():
    with pytest.raises(UserError, match="not divisible by the 8 devices"):
        parallel.check_batch_size(100, parallel.make_mesh())


def test_initial_state_agrees_with_a_fully_optimised_compile():
    """On CPU `initial_state` compiles the initialiser without LLVM's optimisations (it runs
    once); its values must be those of an optimised compile, up to float32 rounding."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    training = train.build_training(
        simclr.get_config("runlocal"), mesh, num_classes=NUM_CLASSES, steps_per_epoch=5,
        num_steps=10,
    )  # fmt: skip
    rng = jax.random.PRNGKey(7)
    fast = training.initial_state(rng)
    # The tests run with jax_disable_most_optimizations: ask for full optimisation explicitly.
    full = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}
    optimised = jax.jit(training.init).lower(rng).compile(compiler_options=full)(rng)
    leaves = jax.tree.leaves(fast)
    assert len(leaves) > 50
    for a, b in zip(leaves, jax.tree.leaves(optimised), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    kernel = np.asarray(fast.params["backbone"]["conv_init"]["kernel"])
    assert 0.1 < kernel.std() < 1.0  # real random draws, not zeros
