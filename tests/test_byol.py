"""BYOL: the loss against its formula, 8 devices against 1, the EMA target, stop-gradient,
resume and export."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import method_checks as mc
from ssl_jax import losses
from ssl_jax.checkpoint import load_encoder
from ssl_jax.methods import extra_state


def byol_numpy(p, z):
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return np.mean(np.sum((p - z) ** 2, axis=1))


@pytest.mark.parametrize("n,d", [(2, 3), (7, 5)])
def test_loss_matches_formula(n, d):
    rng = np.random.default_rng(n)
    p, z = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    np.testing.assert_allclose(jax.jit(losses.byol)(p, z), byol_numpy(p, z), rtol=1e-5)
    # 2 - 2 cos, mean over the batch
    cos = np.sum(p * z, 1) / np.linalg.norm(p, axis=1) / np.linalg.norm(z, axis=1)
    np.testing.assert_allclose(losses.byol(p, z), np.mean(2 - 2 * cos), rtol=1e-5)


def test_degenerate_inputs():
    x = np.random.default_rng(0).normal(size=(2, 4))
    assert float(losses.byol(x, x)) == pytest.approx(0.0, abs=1e-6)  # identical views
    assert float(losses.byol(x, -x)) == pytest.approx(4.0, rel=1e-6)  # opposite
    constant = np.ones((4, 3))  # collapsed: every embedding the same
    assert float(losses.byol(constant, constant)) == pytest.approx(0.0, abs=1e-6)
    out = losses.byol(jnp.asarray(x, jnp.bfloat16), jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.float32


def test_no_gradient_reaches_the_target_projection():
    rng = np.random.default_rng(0)
    p, z = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    assert np.all(jax.grad(losses.byol, argnums=1)(p, z) == 0)


def test_eight_devices_equal_one():
    mc.assert_eight_devices_equal_one("byol")


def test_target_is_the_ema_of_the_new_online_parameters():
    run = mc.two_steps("byol", 8)
    mc.assert_ema_steps(run, lambda step: extra_state.cosine_tau(0.996, step, mc.NUM_STEPS))
    assert "predictor" not in run["state0"].extra["target"]["params"]
    assert float(run["metrics1"]["ema_tau"]) == pytest.approx(0.996)


def test_target_starts_from_its_own_initialisation_and_keeps_its_own_batch_norm():
    run = mc.two_steps("byol", 8)
    online, target = run["state0"].params["backbone"], run["state0"].extra["target"]["params"]
    assert not np.allclose(online["conv_init"]["kernel"], target["backbone"]["conv_init"]["kernel"])
    # Its running statistics come from its own forward pass: they moved, and differ from online.
    stats0 = run["state0"].extra["target"]["batch_stats"]["backbone"]["bn_init"]["mean"]
    stats1 = run["state1"].extra["target"]["batch_stats"]["backbone"]["bn_init"]["mean"]
    assert not np.allclose(stats0, stats1)
    assert not np.allclose(stats1, run["state1"].batch_stats["backbone"]["bn_init"]["mean"])


def test_stop_gradient_on_the_target_branch():
    grads = mc.loss_gradient_wrt("byol", "extra")
    leaves = jax.tree.leaves(grads["target"]["params"])
    assert leaves and all(np.all(np.asarray(g) == 0) for g in leaves)


def test_resume_reproduces_losses_and_exports_the_online_encoder(tmp_path):
    workdir = mc.assert_resume_reproduces_losses("byol", tmp_path)
    apply_fn, variables = load_encoder(workdir)
    # The export is the ONLINE backbone of the final checkpoint, not the target's.
    saved = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "4", "default"))
    mc.assert_trees_close(variables["params"], saved["params"]["backbone"], rtol=0, atol=0)
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    features = apply_fn(variables, images)
    assert features.shape == (4, 64) and np.all(np.isfinite(features))
