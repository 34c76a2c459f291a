"""NT-Xent against its formula, optax's ntxent, closed forms, and under a device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import losses, parallel


def nt_xent_loop(z_a, z_b, t):
    """SimCLR Algorithm 1 written as loops over anchors, in float64 NumPy."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(np.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -np.log(np.exp(z[i] @ z[j] / t) / denom)
    return total / n2


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 8, 0.1), (16, 4, 1.0)])
def test_nt_xent_matches_algorithm_1(n, d, t):
    rng = np.random.default_rng(n)
    z_a, z_b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    got = jax.jit(losses.nt_xent, static_argnums=2)(z_a, z_b, t)
    np.testing.assert_allclose(got, nt_xent_loop(z_a, z_b, t), rtol=1e-5)


def test_nt_xent_matches_optax_ntxent():
    rng = np.random.default_rng(0)
    z_a, z_b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    labels = jnp.concatenate([jnp.arange(6), jnp.arange(6)])
    expected = optax.losses.ntxent(jnp.concatenate([z_a, z_b]), labels, temperature=0.3)
    np.testing.assert_allclose(losses.nt_xent(z_a, z_b, 0.3), expected, rtol=1e-5)


def test_nt_xent_closed_forms():
    n = 8
    # All embeddings equal: every logit is 1/t, so the loss is log(2N - 1).
    same = jnp.ones((n, 4))
    np.testing.assert_allclose(losses.nt_xent(same, same, 0.5), np.log(2 * n - 1), rtol=1e-6)
    # Views identical and images orthogonal: positive logit 1/t, negatives 0.
    eye = jnp.eye(n)
    t = 0.5
    expected = -np.log(np.exp(1 / t) / (np.exp(1 / t) + 2 * n - 2))
    np.testing.assert_allclose(losses.nt_xent(eye, eye, t), expected, rtol=1e-6)


def test_nt_xent_symmetric_scale_invariant_and_float32_for_bfloat16():
    rng = np.random.default_rng(1)
    z_a, z_b = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
    base = losses.nt_xent(z_a, z_b, 0.1)
    np.testing.assert_allclose(losses.nt_xent(z_b, z_a, 0.1), base, rtol=1e-6)
    np.testing.assert_allclose(losses.nt_xent(3.0 * z_a, 0.1 * z_b, 0.1), base, rtol=1e-5)
    low = losses.nt_xent(z_a.astype(jnp.bfloat16), z_b.astype(jnp.bfloat16), 0.1)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, base, rtol=2e-2)
    # Temperatures that overflow exp() in float32 still give a finite loss (log-sum-exp).
    assert np.isfinite(losses.nt_xent(z_a, z_b, 1e-3))


def test_nt_xent_sharded_equals_single_device_and_rows_stay_sharded():
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(2)
    z_a, z_b = (
        rng.normal(size=(32, 8)).astype(np.float32),
        rng.normal(size=(32, 8)).astype(np.float32),
    )
    sharding = NamedSharding(mesh, P("data"))
    grad_fn = jax.jit(jax.value_and_grad(losses.nt_xent, argnums=(0, 1)), static_argnums=2)
    v1, g1 = grad_fn(z_a, z_b, 0.2)
    v8, g8 = grad_fn(jax.device_put(z_a, sharding), jax.device_put(z_b, sharding), 0.2)
    np.testing.assert_allclose(v8, v1, rtol=1e-6)
    for a, b in zip(g8, g1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_nt_xent_memory_is_row_sharded_at_large_batch():
    """With 8 devices no device holds the replicated [2N, 2N] similarity matrix."""
    mesh = parallel.make_mesh()
    n, d = 4096, 128
    sharding = NamedSharding(mesh, P("data"))
    z = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=sharding)
    compiled = (
        jax.jit(jax.value_and_grad(losses.nt_xent, argnums=(0, 1)), static_argnums=2)
        .lower(z, z, 0.1)
        .compile()
    )
    stats = compiled.memory_analysis()
    full_matrix_bytes = (2 * n) ** 2 * 4  # 256 MiB
    assert stats.temp_size_in_bytes < full_matrix_bytes / 2, stats
