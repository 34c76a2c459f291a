"""Multi-crop (`num_local_views`): the pipeline's views of two sizes, one backbone pass per
resolution group, the crops' determinism, and the local views entering SimCLR's and BYOL's
losses. (8 devices against 1 with local views: tests/test_dino.py, test_swav.py.)"""

import jax
import jax.numpy as jnp
import numpy as np

import method_checks as mc
from ssl_jax import data, losses
from ssl_jax.data.sources import from_arrays
from ssl_jax.methods import StepInputs, get_method
from ssl_jax.methods.network import backbone_by_resolution, global_pairs


def test_the_pipeline_makes_global_and_local_views_of_their_sizes():
    config = mc.tiny_config("simclr", num_local_views=3)
    method = get_method(config)
    names = method.view_recipes()
    assert names == ["simclr", "simclr", "local", "local", "local"]
    rng = np.random.default_rng(0)
    source = from_arrays("tiny", rng.integers(0, 256, (64, 24, 24, 3)), np.arange(64) % 4)
    recipes = [config.augment[n] for n in names]
    batch = next(data.train_batches(source, recipes=recipes, global_batch=8, seed=0))
    assert [v.shape for v in batch["views"]] == [(8, 16, 16, 3)] * 2 + [(8, 8, 8, 3)] * 3
    # Each local view has its own randomness (keyed by view), so the three differ.
    assert not np.array_equal(batch["views"][2], batch["views"][3])


def test_local_crops_are_the_same_for_any_process_count_and_on_resume():
    """Every crop is keyed by (seed, epoch, index, view): two hosts' shares of a step join into
    one host's batch, and a pipeline restarted at step 3 (epoch 1) makes the same crops."""
    config = mc.tiny_config("simclr", num_local_views=2)
    recipes = [config.augment[n] for n in get_method(config).view_recipes()]
    rng = np.random.default_rng(1)
    source = from_arrays("tiny", rng.integers(0, 256, (24, 24, 24, 3)), np.arange(24) % 4)

    def steps(start=0, **share):
        batches = data.train_batches(source, recipes=recipes, global_batch=8, seed=5,
                                     start_step=start, **share)  # fmt: skip
        return [next(batches) for _ in range(4 - start)]

    whole = steps()
    halves = [steps(process_index=i, process_count=2) for i in range(2)]
    for step, batch in enumerate(whole):
        for v, view in enumerate(batch["views"]):
            joined = np.concatenate([halves[0][step]["views"][v], halves[1][step]["views"][v]])
            np.testing.assert_array_equal(joined, view)
    for resumed, batch in zip(steps(start=3), whole[3:], strict=True):
        for a, b in zip(resumed["views"], batch["views"], strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_backbone_runs_once_per_resolution_group_with_its_own_batch_statistics():
    net = get_method(mc.tiny_config("simclr", num_local_views=3)).network()
    rng = np.random.default_rng(1)
    views = [jnp.asarray(rng.integers(0, 256, (4, s, s, 3)), jnp.uint8) for s in (16, 16, 8, 8, 8)]
    variables = jax.jit(net.init)(jax.random.PRNGKey(0), views)
    backbone = net.backbone
    bv = {"params": variables["params"]["backbone"],
          "batch_stats": variables["batch_stats"]["backbone"]}  # fmt: skip

    grouped = jax.jit(
        lambda v, views: backbone.apply(
            v, method=lambda m: backbone_by_resolution(m, views, True), mutable=["batch_stats"]
        )
    )
    features, mutated = grouped(bv, views)
    # The same as two separate training-mode passes: the 16 px pair, then the three 8 px views
    # (BatchNorm over each group only; the running averages updated once per group, in order).
    one_pass = jax.jit(lambda v, x: backbone.apply(v, x, train=True, mutable=["batch_stats"]))
    first, stats = one_pass(bv, jnp.concatenate(views[:2]))
    second, stats = one_pass({**bv, **stats}, jnp.concatenate(views[2:]))
    np.testing.assert_allclose(features, np.concatenate([first, second]), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(mutated), jax.tree.leaves(stats), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_global_pairs_are_every_global_view_against_every_other_view():
    assert global_pairs(2, 2) == [(0, 1), (1, 0)]
    assert global_pairs(2, 4) == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]


def _inputs(views, extra=None, apply_target=None):
    return StepInputs(views, extra or {}, jax.random.PRNGKey(0), 0, apply_target)


def test_simclr_averages_nt_xent_over_global_other_pairs_and_local_views_get_gradients():
    rng = np.random.default_rng(2)
    z = [jnp.asarray(rng.normal(size=(6, 5)), jnp.float32) for _ in range(5)]
    views = [None] * 5
    method = get_method(mc.tiny_config("simclr", num_local_views=3))
    loss_of = jax.jit(lambda zz: method.loss({"projections": zz}, _inputs(views))[0])
    loss = loss_of(jnp.concatenate(z))
    pairs = global_pairs(2, 5)
    nt_xent = jax.jit(losses.nt_xent, static_argnums=2)
    expected = np.mean([nt_xent(z[i], z[v], method.config.temperature) for i, v in pairs])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    grad = jax.jit(jax.grad(loss_of))(jnp.concatenate(z))
    assert all(np.abs(g).sum() > 0 for g in np.split(np.asarray(grad), 5))  # every view counts

    # Without local views: exactly the two-view loss.
    two = get_method(mc.tiny_config("simclr"))
    value = two.loss({"projections": jnp.concatenate(z[:2])}, _inputs([None] * 2))[0]
    assert value == losses.nt_xent(z[0], z[1], two.config.temperature)


def test_byol_targets_only_the_global_views_and_predicts_them_from_every_view():
    rng = np.random.default_rng(3)
    p = [jnp.asarray(rng.normal(size=(6, 5)), jnp.float32) for _ in range(5)]
    t = [jnp.asarray(rng.normal(size=(6, 5)), jnp.float32) for _ in range(2)]
    seen = []

    def apply_target(variables, views):
        seen.append(len(views))
        return {"projections": jnp.concatenate(t[: len(views)])}, {}

    method = get_method(mc.tiny_config("byol", num_local_views=3), total_steps=10)
    inputs = _inputs([None] * 5, {"target": {}}, apply_target)
    loss = method.loss({"predictions": jnp.concatenate(p)}, inputs)[0]
    assert seen == [2]  # the target network never sees a local crop
    pairs = global_pairs(2, 5)
    expected = 2 * np.mean([losses.byol(p[v], t[g]) for g, v in pairs])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    grad = jax.grad(lambda pp: method.loss({"predictions": pp}, inputs)[0])(jnp.concatenate(p))
    assert all(np.abs(g).sum() > 0 for g in np.split(np.asarray(grad), 5))

    # Two views: BYOL's symmetric sum, byol(q1, z2) + byol(q2, z1).
    two = get_method(mc.tiny_config("byol"), total_steps=10)
    value = two.loss({"predictions": jnp.concatenate(p[:2])},
                     _inputs([None] * 2, {"target": {}}, apply_target))[0]  # fmt: skip
    np.testing.assert_allclose(value, losses.byol(p[0], t[1]) + losses.byol(p[1], t[0]), rtol=1e-7)
