"""SwAV: the Sinkhorn codes and the swapped-prediction loss, then the method's prototypes.

Checked against NumPy float64 re-implementations of the official code's loops (facebookresearch/
swav main_swav.py: `distributed_sinkhorn` and the loss loop of `train`, with and without its
queue), for the marginals, the stop-gradient on the codes, bfloat16 inputs, and the global-batch
property under a mesh of 8 simulated devices. The method: the queue's life (empty, filling,
used, FIFO) against main_swav.py's loop, a train step against the reference on the network's
own outputs, 8 devices against 1 with local crops and the queue, and resume.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import method_checks as mc
from numpy_reference import log_softmax
from ssl_jax import losses, methods, parallel
from ssl_jax.errors import UserError
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


def swav_reference(global_scores, local_scores, temperature, iterations, epsilon,
                   queue_scores=None):  # fmt: skip
    """The loss loop of main_swav.py `train`, crops_for_assign = the global crops, float64.
    With `queue_scores` [V, K, P] (queue i against the prototypes), crop i's codes are those
    of [queue_i; crop i] with only the last B rows kept (`distributed_sinkhorn(...)[-bs:]`)."""
    crops = [np.asarray(s, np.float64) for s in global_scores]
    if local_scores is not None:
        crops += [np.asarray(s, np.float64) for s in local_scores]
    loss, bs = 0.0, crops[0].shape[0]
    for crop_id in range(len(global_scores)):
        out = crops[crop_id]
        if queue_scores is not None:
            out = np.concatenate([np.asarray(queue_scores[crop_id], np.float64), out])
        q = sinkhorn_reference(out, iterations, epsilon)[-bs:]
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


@pytest.mark.parametrize("num_global,num_local", [(2, 0), (2, 3)])
def test_swav_with_a_queue_matches_reference(num_global, num_local):
    rng = np.random.default_rng(20 + num_local)
    b, k, p = 8, 24, 7
    global_scores = cosine_scores(rng, (num_global, b, p))
    local_scores = cosine_scores(rng, (num_local, b, p)) if num_local else None
    queue_scores = cosine_scores(rng, (num_global, k, p))
    with_queue = swav_reference(global_scores, local_scores, 0.1, 3, 0.05, queue_scores)
    without = swav_reference(global_scores, local_scores, 0.1, 3, 0.05)
    assert abs(with_queue - without) > 1e-3  # the queue changes the codes
    np.testing.assert_allclose(swav(global_scores, local_scores, queue_scores=queue_scores),
                               with_queue, rtol=1e-5)  # fmt: skip
    # use_queue traced, as the method passes it: False gives the loss without the queue.
    fn = jax.jit(lambda use: losses.swav(global_scores, local_scores, queue_scores=queue_scores,
                                         use_queue=use))  # fmt: skip
    np.testing.assert_allclose(fn(True), with_queue, rtol=1e-5)
    np.testing.assert_allclose(fn(False), without, rtol=1e-5)


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
    # A replicated queue (the method's state) with the sharded batch: codes over both.
    queue_scores = cosine_scores(rng, (2, 3 * b, p))
    fn = jax.jit(lambda g, q: losses.swav(g, None, queue_scores=q))
    v8_queue = fn(jax.device_put(global_scores, crops_sharding),
                  jax.device_put(queue_scores, parallel.replicated(mesh)))  # fmt: skip
    np.testing.assert_allclose(v8_queue, fn(global_scores, queue_scores), rtol=1e-5)
    expected = swav_reference(global_scores, None, 0.1, 3, 0.05, queue_scores)
    np.testing.assert_allclose(v8_queue, expected, rtol=1e-5)


# ------------------------------------------------------------------ the method

# steps_per_epoch is 5 in method_checks: 0.2 epochs freeze the first step only. With 2 local
# crops and a queue of one batch from the start: step 1 fills it, step 2 uses it, so the
# compiled runs below (1 and 8 devices) cover local crops and both queue cases at once.
FROZEN = (("param_groups.prototypes.frozen_epochs", 0.2),)
QUEUE = FROZEN + (("num_local_views", 2), ("queue_length", mc.GLOBAL_BATCH),
                  ("epoch_queue_starts", 0.0))  # fmt: skip


def l2n(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main_swav_iteration(queue, use_the_queue, embedding, prototypes, bs, num_crops, temperature,
                        iterations=3, epsilon=0.05):  # fmt: skip
    """One iteration of main_swav.py `train`'s loss block, float64, crops_for_assign = (0, 1):
    the queue (None before its epoch) is used once its last row is non-zero, then shifted and
    refilled with this batch's embeddings of the crop. Returns (loss, queue, use_the_queue)."""
    output = embedding @ prototypes.T  # [num_crops * bs, P]
    loss = 0.0
    for i, crop_id in enumerate((0, 1)):
        out = output[bs * crop_id : bs * (crop_id + 1)]
        if queue is not None:
            if use_the_queue or not np.all(queue[i, -1, :] == 0):
                use_the_queue = True
                out = np.concatenate([queue[i] @ prototypes.T, out])
            queue[i, bs:] = queue[i, :-bs].copy()
            queue[i, :bs] = embedding[crop_id * bs : (crop_id + 1) * bs]
        q = sinkhorn_reference(out, iterations, epsilon)[-bs:]
        subloss = 0.0
        for v in np.delete(np.arange(num_crops), crop_id):
            subloss -= np.mean(np.sum(q * log_softmax(output[bs * v : bs * (v + 1)] / temperature),
                                      axis=1))  # fmt: skip
        loss += subloss / (num_crops - 1)
    return loss / 2, queue, use_the_queue


def newest_first(queue):
    """Our ring buffer in main_swav.py's order: the last batch written first."""
    rows, ptr = np.asarray(queue["rows"]), int(queue["ptr"])
    size, bs = rows.shape[1], mc.GLOBAL_BATCH
    starts = [(ptr - j * bs) % size for j in range(1, size // bs + 1)]
    return np.concatenate([rows[:, s : s + bs] for s in starts], axis=1)


def test_queue_follows_main_swav_loop_before_during_and_after_filling():
    """Eight iterations of main_swav.py's loop (its shifting queue of zeros created at the
    start epoch) against the method's loss and update_extra on given network outputs: nothing
    written before the start step, unused while filling, codes over [queue; batch] once full,
    the oldest batch overwritten after that; local crops never enqueued."""
    bs, dim, num_prototypes, size, num_crops = mc.GLOBAL_BATCH, 16, 30, 3 * mc.GLOBAL_BATCH, 4
    config = mc.tiny_config("swav", num_local_views=2, queue_length=size, epoch_queue_starts=0.4)
    method = methods.get_method(config, steps_per_epoch=5)
    assert method.queue_start_step == 2
    extra = method.init_extra(None, None, None)
    np.testing.assert_array_equal(extra["queue"]["rows"], np.zeros((2, size, dim)))
    views = [jnp.zeros((bs, 1, 1, 3), jnp.uint8)] * num_crops

    @jax.jit
    def step(extra, outputs, step):
        loss, metrics, aux = method.loss(outputs, StepInputs(views, extra, None, step, None))
        return loss, metrics["queue_in_use"], method.update_extra(extra, aux, params=None,
                                                                   step=step)  # fmt: skip

    rng = np.random.default_rng(0)
    queue, use_the_queue, used = None, False, []
    for it in range(8):
        embedding = l2n(rng.normal(size=(num_crops * bs, dim)))  # [crops x B, D], unit rows
        prototypes = l2n(rng.normal(size=(num_prototypes, dim)))  # [P, D], torch's weight
        if it >= method.queue_start_step and queue is None:
            queue = np.zeros((2, size, dim))
        expected, queue, use_the_queue = main_swav_iteration(
            queue, use_the_queue, embedding, prototypes, bs, num_crops, 0.1
        )
        outputs = {"projections": (embedding @ prototypes.T).astype(np.float32),
                   "unit_embeddings": embedding.astype(np.float32),
                   "prototypes": prototypes.T.astype(np.float32)}  # fmt: skip
        loss, in_use, extra = step(extra, outputs, it)
        np.testing.assert_allclose(loss, expected, rtol=1e-5, err_msg=str(it))
        used.append(bool(in_use))
        assert used[-1] == use_the_queue, it
        if queue is None:  # before the start epoch: nothing written
            np.testing.assert_array_equal(extra["queue"]["rows"], 0.0)
        else:
            np.testing.assert_allclose(newest_first(extra["queue"]), queue, rtol=1e-6,
                                       atol=1e-7, err_msg=str(it))  # fmt: skip
    # Written at steps 2, 3, 4 (3 batches fill it), used from step 5, wrapped at 5, 6, 7.
    assert used == [False] * 5 + [True] * 3

    with pytest.raises(UserError, match="queue_length=24 .* multiple of the global batch 16"):
        methods.get_method(mc.tiny_config("swav", queue_length=24))
    assert methods.get_method(mc.tiny_config("swav")).init_extra(None, None, None) == {}


def unit_norm_columns(kernel):
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)


def test_prototypes_stay_unit_norm_and_are_frozen_in_the_first_epoch():
    run = mc.two_steps("swav", 1, QUEUE)
    for state in ("state0", "state1", "state2"):
        unit_norm_columns(run[state].params["prototypes"]["kernel"])
    kernels = [run[s].params["prototypes"]["kernel"] for s in ("state0", "state1", "state2")]
    np.testing.assert_allclose(kernels[1], kernels[0], rtol=1e-6, atol=1e-7)  # frozen step
    assert not np.allclose(kernels[2], kernels[1])  # then they move, and stay on the sphere
    assert not np.allclose(run["state1"].params["projector"]["dense1"]["kernel"],
                           run["state0"].params["projector"]["dense1"]["kernel"])  # fmt: skip


def test_train_steps_are_main_swav_on_their_outputs_and_enqueue_the_global_crops():
    """Step 1 (queue empty) and step 2 (queue full of step 1's embeddings) against the
    reference loop on the network's own outputs, with 2 local crops."""
    run = mc.two_steps("swav", 1, QUEUE)
    mesh, training, _, _ = mc.setup("swav", 1, QUEUE)
    views = mc.batch(mesh, sizes=[r.size for r in training.recipes])["views"]
    forward = jax.jit(lambda v, views: training.net.apply(v, views, train=True,
                                                          mutable=["batch_stats"])[0])  # fmt: skip
    bs = mc.GLOBAL_BATCH
    for it, (before, after) in enumerate((("state0", "state1"), ("state1", "state2"))):
        s = run[before]
        out = jax.device_get(forward({"params": s.params, "batch_stats": s.batch_stats}, views))
        embedding, prototypes = out["unit_embeddings"], s.params["prototypes"]["kernel"].T
        np.testing.assert_allclose(out["embedding"], embedding[:bs], rtol=0, atol=0)
        np.testing.assert_allclose(embedding @ prototypes.T, out["projections"], rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
        assert np.abs(out["projections"]).max() <= 1 + 1e-5  # unit embeddings and prototypes
        # main_swav.py's newest-first queue; with one batch of rows it is our ring buffer.
        queue = np.asarray(s.extra["queue"]["rows"], np.float64).copy()
        embedding, prototypes = embedding.astype(np.float64), prototypes.astype(np.float64)
        expected, queue, used = main_swav_iteration(queue, False, embedding, prototypes, bs, 4, 0.1)
        assert used == (it == 1)  # empty at the start; one batch fills it
        metrics = run[f"metrics{it + 1}"]
        assert float(metrics["queue_in_use"]) == used
        np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
        # After the step: this batch's global crops, unit rows; the local crops are not kept.
        np.testing.assert_allclose(run[after].extra["queue"]["rows"], queue, rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
        assert int(run[after].extra["queue"]["ptr"]) == 0


def test_eight_devices_equal_one_with_local_crops_and_the_queue():
    mc.assert_eight_devices_equal_one("swav", QUEUE)
    assert float(mc.two_steps("swav", 8, QUEUE)["metrics2"]["queue_in_use"]) == 1.0


def test_resume_with_the_queue_reproduces_losses(tmp_path):
    """Queue of 2 batches from the start (runlocal: batch 32, 4 steps, checkpoints at 2 and 4):
    steps 3 and 4 use the queue restored from the step-2 checkpoint; an empty queue would not
    be used and the losses would differ."""
    workdir = mc.assert_resume_reproduces_losses("swav", tmp_path, queue_length=64,
                                                 epoch_queue_starts=0.0)  # fmt: skip
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        used = {r["step"]: r["queue_in_use"] for r in map(json.loads, f) if "queue_in_use" in r}
    assert used == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}
