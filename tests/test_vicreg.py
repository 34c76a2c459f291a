"""VICReg: the loss against Eq. 6 (official code) in float64, closed forms, the global batch
(8 devices against 1), the method's use of its coefficients, and the config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_checks as mc
from ssl_jax import losses, parallel
from ssl_jax.errors import UserError
from ssl_jax.methods import VICReg, get_method

EPS = 1e-4  # the official code's eps inside the square root of the variance


def vicreg_terms_numpy(z_a, z_b):
    """(invariance, (v_a, v_b), (c_a, c_b)) of Bardes et al. 2022, Eq. 1-5, float64."""
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    invariance = np.mean((z_a - z_b) ** 2)  # over N x D

    def variance_covariance(z):
        d = z.shape[1]
        std = np.sqrt(np.var(z, axis=0, ddof=1) + EPS)  # unbiased, as torch.var
        variance = np.mean(np.maximum(0.0, 1.0 - std))
        cov = np.cov(z, rowvar=False, ddof=1).reshape(d, d)  # Zc^T Zc / (N - 1)
        off_diagonal = cov[~np.eye(d, dtype=bool)]
        return variance, np.sum(off_diagonal**2) / d

    (v_a, c_a), (v_b, c_b) = variance_covariance(z_a), variance_covariance(z_b)
    return invariance, (v_a, v_b), (c_a, c_b)


def vicreg_numpy(z_a, z_b, sim_coeff, std_coeff, cov_coeff):
    """Eq. 6 with the official code's reduction: the variance term averaged over the views."""
    invariance, (v_a, v_b), (c_a, c_b) = vicreg_terms_numpy(z_a, z_b)
    return sim_coeff * invariance + std_coeff * (v_a + v_b) / 2 + cov_coeff * (c_a + c_b)


COEFFICIENTS = [
    (25.0, 25.0, 1.0),
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (2.0, 3.0, 5.0),
]


def _views(rng, n, d):
    # Per-dimension scales around 1, so the variance hinge is active in some dimensions only.
    scale = np.linspace(0.3, 2.0, d)
    z_a = rng.normal(size=(n, d)) * scale
    z_b = z_a + 0.5 * rng.normal(size=(n, d)) + 0.3 * z_a[:, ::-1]  # correlated dimensions
    return z_a, z_b


@pytest.mark.parametrize("n,d", [(2, 3), (7, 5), (32, 16)])
@pytest.mark.parametrize("coefficients", COEFFICIENTS)
def test_loss_matches_formula(n, d, coefficients):
    z_a, z_b = _views(np.random.default_rng(100 * n + d), n, d)
    expected = vicreg_numpy(z_a, z_b, *coefficients)
    np.testing.assert_allclose(losses.vicreg(z_a, z_b, *coefficients), expected, rtol=1e-5)


def test_each_term_is_exercised_by_the_random_inputs():
    # The parametrised comparisons above only mean something if no term is trivially zero.
    z_a, z_b = _views(np.random.default_rng(100 * 32 + 16), 32, 16)
    invariance, (v_a, v_b), (c_a, c_b) = vicreg_terms_numpy(z_a, z_b)
    assert min(invariance, v_a, v_b, c_a, c_b) > 1e-3
    jitted = jax.jit(losses.vicreg, static_argnums=(2, 3, 4))
    np.testing.assert_allclose(
        jitted(z_a, z_b, 25.0, 25.0, 1.0), vicreg_numpy(z_a, z_b, 25.0, 25.0, 1.0), rtol=1e-5
    )


def test_identical_views_have_no_invariance_term():
    z, _ = _views(np.random.default_rng(1), 9, 4)
    assert float(losses.vicreg(z, z, 1.0, 0.0, 0.0)) == 0.0
    _, (v, _), (c, _) = vicreg_terms_numpy(z, z)
    np.testing.assert_allclose(losses.vicreg(z, z, 25.0, 25.0, 1.0), 25 * v + 2 * c, rtol=1e-5)


def test_collapsed_constant_embeddings():
    # Zero variance: every dimension pays relu(1 - sqrt(0 + 1e-4)) = 0.99; no covariance.
    constant = np.full((6, 5), 0.3)
    assert float(losses.vicreg(constant, constant, 25.0, 25.0, 1.0)) == pytest.approx(24.75)
    assert float(losses.vicreg(constant, constant, 0.0, 1.0, 0.0)) == pytest.approx(0.99)
    assert float(losses.vicreg(constant, constant, 0.0, 0.0, 1.0)) == 0.0
    # Two different constants: invariance (1 - 3)^2 = 4 on top of it.
    ones, threes = np.ones((6, 5)), np.full((6, 5), 3.0)
    assert float(losses.vicreg(ones, threes, 25.0, 25.0, 1.0)) == pytest.approx(100 + 24.75)


def test_batch_of_two_by_hand():
    # Rows (0, 0) and (2, 2): centred +-1, unbiased var 2 (std > 1: no hinge), Cov = [[2, 2],
    # [2, 2]], so c = (2^2 + 2^2) / D = 4 per view: L = 1 * (4 + 4) = 8.
    z = np.array([[0.0, 0.0], [2.0, 2.0]])
    assert float(losses.vicreg(z, z, 25.0, 25.0, 1.0)) == pytest.approx(8.0, rel=1e-6)
    # Rows (0, 0) and (1, -1): centred +-0.5, var 0.5, Cov_01 = -0.5, c = 2 * 0.25 / 2 = 0.25.
    z = np.array([[0.0, 0.0], [1.0, -1.0]])
    expected = 25 * (1 - np.sqrt(0.5 + EPS)) + 1 * (0.25 + 0.25)
    assert float(losses.vicreg(z, z, 25.0, 25.0, 1.0)) == pytest.approx(expected, rel=1e-6)
    # And the invariance: mean over N x D of (z_a - z_b)^2 = (0 + 0 + 1 + 1) / 4.
    zero = np.zeros((2, 2))
    assert float(losses.vicreg(z, zero, 1.0, 0.0, 0.0)) == pytest.approx(0.5)


def test_bfloat16_inputs_give_a_float32_loss():
    z_a, z_b = _views(np.random.default_rng(2), 16, 8)
    z_a, z_b = jnp.asarray(z_a, jnp.bfloat16), jnp.asarray(z_b, jnp.bfloat16)
    out = losses.vicreg(z_a, z_b, 25.0, 25.0, 1.0)
    assert out.dtype == jnp.float32 and out.shape == ()
    expected = vicreg_numpy(np.asarray(z_a, np.float32), np.asarray(z_b, np.float32), 25, 25, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_loss_of_a_sharded_batch_is_the_global_batch_loss():
    """Variance and covariance are over the GLOBAL batch: with the rows split over 8 devices
    the value is the full-batch one, not the mean of per-device losses."""
    mesh = parallel.make_mesh()
    z_a, z_b = (z.astype(np.float32) for z in _views(np.random.default_rng(3), 32, 6))
    sharded = [jax.device_put(z, parallel.batch_sharded(mesh)) for z in (z_a, z_b)]
    value = jax.jit(losses.vicreg, static_argnums=(2, 3, 4))(*sharded, 25.0, 25.0, 1.0)
    expected = vicreg_numpy(z_a, z_b, 25.0, 25.0, 1.0)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    per_device = np.mean(
        [
            vicreg_numpy(a, b, 25, 25, 1)
            for a, b in zip(np.split(z_a, 8), np.split(z_b, 8), strict=True)
        ]
    )
    assert abs(per_device - expected) > 0.05 * expected


def test_method_loss_uses_each_coefficient_on_its_term():
    config = mc.tiny_config("vicreg", sim_coeff=2.0, std_coeff=3.0, cov_coeff=5.0)
    z_a, z_b = _views(np.random.default_rng(4), 8, 5)
    projections = np.concatenate([z_a, z_b]).astype(np.float32)  # [2B, D], view-major
    loss, metrics, aux = VICReg(config).loss({"projections": projections}, None)
    assert loss.dtype == jnp.float32 and metrics == {} and aux == {}
    np.testing.assert_allclose(loss, vicreg_numpy(z_a, z_b, 2.0, 3.0, 5.0), rtol=1e-5)
    # Swapped coefficients give other values: each one weighs its own term.
    for permuted in [(3.0, 2.0, 5.0), (5.0, 3.0, 2.0), (2.0, 5.0, 3.0)]:
        assert abs(vicreg_numpy(z_a, z_b, *permuted) - float(loss)) > 1e-2
    shuffled = vicreg_numpy(projections[0::2], projections[1::2], 2.0, 3.0, 5.0)
    assert abs(shuffled - float(loss)) > 1e-2


def test_eight_devices_equal_one():
    # The loss is over the GLOBAL batch: 8 devices must see the same statistics as 1.
    mc.assert_eight_devices_equal_one("vicreg")


# ----------------------------------------------------------------------------- config checks


def test_valid_settings_pass():
    get_method(mc.tiny_config("vicreg"))
    get_method(mc.tiny_config("vicreg", sim_coeff=0.0, std_coeff=0.0, cov_coeff=0.0))


@pytest.mark.parametrize("key", ["sim_coeff", "std_coeff", "cov_coeff"])
@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_bad_coefficient_is_a_user_error(key, value):
    with pytest.raises(UserError, match=key):
        get_method(mc.tiny_config("vicreg", **{key: value}))


def test_a_predictor_block_is_a_user_error():
    config = mc.tiny_config("vicreg")
    config.predictor = dict(hidden_dim=8, out_dim=32, num_layers=2)
    with pytest.raises(UserError, match="predictor"):
        get_method(config)
