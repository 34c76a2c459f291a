"""Barlow Twins: the loss against Eq. 1 in float64, closed forms, the global batch (8 devices
against 1), the method's split of the projections, and the config checks (also SimCLR's)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_checks as mc
from ssl_jax import losses, optim, parallel
from ssl_jax.errors import UserError
from ssl_jax.methods import BarlowTwins, get_method

EPS = 1e-5  # BatchNorm1d's eps in the official code


def barlow_twins_numpy(z_a, z_b, lambd):
    """Zbontar et al. 2021, Eq. 1: standardise each dimension over the batch (biased variance),
    C = za^T zb / N, L = sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2. Float64."""
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    n, d = z_a.shape
    za = (z_a - z_a.mean(axis=0)) / np.sqrt(z_a.var(axis=0) + EPS)
    zb = (z_b - z_b.mean(axis=0)) / np.sqrt(z_b.var(axis=0) + EPS)
    c = np.einsum("bi,bj->ij", za, zb) / n
    on_diag = sum((1.0 - c[i, i]) ** 2 for i in range(d))
    off_diag = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on_diag + lambd * off_diag


@pytest.mark.parametrize("n,d", [(2, 3), (7, 5), (32, 16)])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_loss_matches_formula(n, d, lambd):
    rng = np.random.default_rng(100 * n + d)
    z_a = rng.normal(size=(n, d))
    z_b = 0.5 * z_a + rng.normal(size=(n, d))  # correlated views: C_ii well inside (0, 1)
    expected = barlow_twins_numpy(z_a, z_b, lambd)
    np.testing.assert_allclose(losses.barlow_twins(z_a, z_b, lambd), expected, rtol=1e-5)
    np.testing.assert_allclose(
        jax.jit(losses.barlow_twins, static_argnums=2)(z_a, z_b, lambd), expected, rtol=1e-5
    )
    # Standardised per dimension: a positive scale and an offset per dimension change nothing
    # (up to eps), the loss is symmetric in the two views.
    scale, shift = rng.uniform(0.5, 5.0, size=d), rng.normal(size=d) * 10
    np.testing.assert_allclose(
        losses.barlow_twins(z_a * scale + shift, z_b, lambd), expected, rtol=1e-4
    )
    np.testing.assert_allclose(losses.barlow_twins(z_b, z_a, lambd), expected, rtol=1e-5)


def test_lambda_weights_only_the_off_diagonal():
    rng = np.random.default_rng(3)
    z_a, z_b = rng.normal(size=(9, 4)), rng.normal(size=(9, 4))
    on = float(losses.barlow_twins(z_a, z_b, 0.0))
    np.testing.assert_allclose(on, barlow_twins_numpy(z_a, z_b, 0.0), rtol=1e-5)
    off = barlow_twins_numpy(z_a, z_b, 1.0) - barlow_twins_numpy(z_a, z_b, 0.0)
    assert off > 0.1
    np.testing.assert_allclose(losses.barlow_twins(z_a, z_b, 0.3), on + 0.3 * off, rtol=1e-5)


def test_collapsed_constant_embeddings_give_d():
    # Standardisation gives 0 / sqrt(eps) = 0, so C = 0: L = sum_i (1 - 0)^2 = D, any lambd.
    constant = np.full((8, 6), 3.0)
    assert float(losses.barlow_twins(constant, constant, 0.0051)) == pytest.approx(6.0, abs=1e-6)
    other = np.random.default_rng(0).normal(size=(8, 6))  # one view collapsed is enough
    assert float(losses.barlow_twins(constant, other, 0.5)) == pytest.approx(6.0, abs=1e-6)


def test_batch_of_two_identical_views():
    # Rows differ by +-2 in every dimension: deviations +-1, biased var 1, so the standardised
    # entries are +-r with r = 1 / sqrt(1 + eps) and every |C_ij| = r^2. With identical views:
    # L = D (1 - r^2)^2 + lambd D (D - 1) r^4 -- two points are perfectly correlated.
    z = np.array([[1.0, -1.0, 2.0], [-1.0, 1.0, 0.0]])
    r2 = 1 / (1 + EPS)
    expected = 3 * (1 - r2) ** 2 + 0.1 * 3 * 2 * r2**2
    assert expected == pytest.approx(0.6, rel=1e-4)
    np.testing.assert_allclose(losses.barlow_twins(z, z, 0.1), expected, rtol=1e-6)


def test_decorrelated_identical_views_reach_zero_and_opposite_views_reach_4d():
    # Hadamard columns: zero mean, variance 1, uncorrelated. C = I / (1 + eps) for identical
    # views (L ~ 0) and -I / (1 + eps) for opposite views (L = D (1 + 1 / (1 + eps))^2 ~ 4 D).
    z = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    r2 = 1 / (1 + EPS)
    assert float(losses.barlow_twins(z, z, 5.0)) == pytest.approx(2 * (1 - r2) ** 2, abs=1e-9)
    np.testing.assert_allclose(losses.barlow_twins(z, -z, 5.0), 2 * (1 + r2) ** 2, rtol=1e-6)


def test_bfloat16_inputs_give_a_float32_loss():
    rng = np.random.default_rng(4)
    z_a = jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16)
    z_b = jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16)
    out = losses.barlow_twins(z_a, z_b, 0.0051)
    assert out.dtype == jnp.float32 and out.shape == ()
    # Computed in float32 from the bfloat16 values: as float64 on those same values.
    expected = barlow_twins_numpy(np.asarray(z_a, np.float32), np.asarray(z_b, np.float32), 0.0051)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_loss_of_a_sharded_batch_is_the_global_batch_loss():
    """C and the standardisation are over the GLOBAL batch: with the rows split over 8 devices
    the value is the full-batch one, not the mean of per-device losses."""
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(5)
    z_a = rng.normal(size=(32, 6)).astype(np.float32)
    z_b = (z_a + rng.normal(size=(32, 6))).astype(np.float32)
    sharded = [jax.device_put(z, parallel.batch_sharded(mesh)) for z in (z_a, z_b)]
    value = jax.jit(losses.barlow_twins, static_argnums=2)(*sharded, 0.1)
    expected = barlow_twins_numpy(z_a, z_b, 0.1)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    per_device = np.mean(
        [
            barlow_twins_numpy(a, b, 0.1)
            for a, b in zip(np.split(z_a, 8), np.split(z_b, 8), strict=True)
        ]
    )
    assert abs(per_device - expected) > 0.1 * expected


def test_method_loss_splits_the_projections_into_the_two_views():
    config = mc.tiny_config("barlow_twins", lambd=0.25)
    rng = np.random.default_rng(6)
    projections = rng.normal(size=(2 * 8, 5)).astype(np.float32)  # [2B, D], view-major
    projections[8:] += projections[:8]  # row i of view 2 is the same image as row i of view 1
    loss, metrics, aux = BarlowTwins(config).loss({"projections": projections}, None)
    assert loss.dtype == jnp.float32 and metrics == {} and aux == {}
    expected = barlow_twins_numpy(projections[:8], projections[8:], 0.25)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    shuffled = barlow_twins_numpy(projections[0::2], projections[1::2], 0.25)
    assert abs(shuffled - expected) > 1e-2


def test_eight_devices_equal_one():
    # The loss is over the GLOBAL batch: 8 devices must see the same statistics as 1.
    mc.assert_eight_devices_equal_one("barlow_twins")


# ----------------------------------------------------------------------------- config checks


def test_valid_settings_pass():
    get_method(mc.tiny_config("barlow_twins"))
    get_method(mc.tiny_config("barlow_twins", lambd=0.0))  # no redundancy term: allowed


@pytest.mark.parametrize("lambd", [-0.0051, float("nan")])
def test_bad_lambda_is_a_user_error(lambd):
    with pytest.raises(UserError, match="lambd"):
        get_method(mc.tiny_config("barlow_twins", lambd=lambd))


def test_a_predictor_block_is_a_user_error():
    config = mc.tiny_config("barlow_twins")
    config.predictor = dict(hidden_dim=8, out_dim=32, num_layers=2)
    with pytest.raises(UserError, match="predictor"):
        get_method(config)


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_simclr_non_positive_temperature_is_a_user_error(temperature):
    get_method(mc.tiny_config("simclr"))  # the preset's own value passes
    with pytest.raises(UserError, match="temperature"):
        get_method(mc.tiny_config("simclr", temperature=temperature))


@pytest.mark.parametrize("method", ["simclr", "barlow_twins"])
def test_param_group_for_a_missing_part_is_a_user_error(method):
    config = mc.tiny_config(method)
    net = get_method(config).network()
    views = [jnp.zeros((2, 16, 16, 3), jnp.uint8)] * 2
    params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), views, train=False)["params"])
    assert set(params) == {"backbone", "projector"}
    optim.from_config(config, params=params, total_steps=10, steps_per_epoch=5)  # no groups: ok
    config.param_groups.predictor = dict(schedule="constant")
    with pytest.raises(UserError, match="predictor"):
        optim.from_config(config, params=params, total_steps=10, steps_per_epoch=5)
