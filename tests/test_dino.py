"""DINO: the self-distillation loss and the centre update, then the method.

The losses are checked against a NumPy float64 re-implementation of the official code's loops
(facebookresearch/dino main_dino.py `DINOLoss.forward` and `update_center`), for the
stop-gradient on the teacher and the centre, bfloat16 inputs, and the global-batch property
under 8 simulated devices. The method: 8 devices against 1 with local crops, the EMA teacher
that sees only the global crops, the centre, the weight-normalised last layer frozen in the
first epoch, per-tensor clipping and the weight-decay schedule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import method_checks as mc
from numpy_reference import log_softmax, softmax
from ssl_jax import losses, optim, parallel

# Jitted once per shape: one compilation instead of one per operation in eager mode.
dino = jax.jit(losses.dino, static_argnames=("student_temperature", "teacher_temperature"))
center_update = jax.jit(losses.dino_center_update, static_argnames="momentum")


def dino_reference(student, teacher, center, student_temp, teacher_temp):
    """DINOLoss.forward's loops on one process, float64. Returns (loss, number of pairs)."""
    student = np.asarray(student, np.float64) / student_temp  # [S, B, K]: the chunks
    center = np.asarray(center, np.float64).reshape(1, -1)
    teacher = softmax((np.asarray(teacher, np.float64) - center) / teacher_temp)  # [T, B, K]
    total, n_terms = 0.0, 0
    for iq, q in enumerate(teacher):
        for v in range(len(student)):
            if v == iq:  # the same crop for student and teacher
                continue
            total += np.mean(np.sum(-q * log_softmax(student[v]), axis=-1))
            n_terms += 1
    return total / n_terms, n_terms


def center_reference(center, teacher, momentum):
    """DINOLoss.update_center on one process: sum over the rows, divided by their number."""
    rows = np.asarray(teacher, np.float64).reshape(-1, teacher.shape[-1])  # torch.cat of crops
    batch_center = rows.sum(axis=0, keepdims=True) / len(rows)
    return np.asarray(center, np.float64).reshape(1, -1) * momentum + batch_center * (1 - momentum)


def random_logits(rng, crops, b, k):
    return rng.normal(scale=2.0, size=(crops, b, k)).astype(np.float32)


@pytest.mark.parametrize("num_student,num_teacher,pairs", [(2, 2, 2), (6, 2, 10), (5, 3, 12)])
def test_dino_matches_reference_and_averages_over_pairs(num_student, num_teacher, pairs):
    rng = np.random.default_rng(num_student)
    b, k = 8, 16
    student = random_logits(rng, num_student, b, k)
    teacher = random_logits(rng, num_teacher, b, k)
    center = rng.normal(size=(k,)).astype(np.float32)
    expected, n_terms = dino_reference(student, teacher, center, 0.1, 0.04)
    assert n_terms == pairs == num_teacher * num_student - num_teacher
    got = dino(student, teacher, center)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # A [1, K] centre (the code's buffer) and other temperatures.
    got = dino(student, teacher, center[None], student_temperature=0.2, teacher_temperature=0.07)
    np.testing.assert_allclose(got, dino_reference(student, teacher, center, 0.2, 0.07)[0], 1e-5)


def test_dino_two_global_crops_is_the_mean_of_the_two_swapped_terms():
    rng = np.random.default_rng(0)
    student, teacher = random_logits(rng, 2, 4, 5), random_logits(rng, 2, 4, 5)
    center = np.zeros(5, np.float32)

    def term(t, s):
        q = softmax(teacher[t].astype(np.float64) / 0.04)
        return -np.mean(np.sum(q * log_softmax(student[s].astype(np.float64) / 0.1), axis=-1))

    expected = (term(0, 1) + term(1, 0)) / 2
    np.testing.assert_allclose(dino(student, teacher, center), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        losses.dino(student[:1], teacher, center)


def test_dino_gradient_reaches_only_the_student():
    rng = np.random.default_rng(1)
    student, teacher = random_logits(rng, 4, 8, 6), random_logits(rng, 2, 8, 6)
    center = rng.normal(size=(6,)).astype(np.float32)
    g_student, g_teacher, g_center = jax.jit(jax.grad(losses.dino, argnums=(0, 1, 2)))(
        student, teacher, center
    )
    assert np.abs(g_student).max() > 1e-3
    np.testing.assert_array_equal(g_teacher, 0.0)
    np.testing.assert_array_equal(g_center, 0.0)
    # The student's gradient is that of the cross-entropy against constant targets.
    targets = jax.nn.softmax((teacher - center) / 0.04, axis=-1)

    def constant_targets(student):
        log_p = jax.nn.log_softmax(student / 0.1, axis=-1)
        terms = [
            -jnp.mean(jnp.sum(targets[t] * log_p[s], axis=-1))
            for t in range(2)
            for s in range(4)
            if s != t
        ]
        return sum(terms) / len(terms)

    np.testing.assert_allclose(
        g_student, jax.jit(jax.grad(constant_targets))(student), rtol=1e-5, atol=1e-8
    )


def test_dino_center_update_matches_reference():
    rng = np.random.default_rng(2)
    teacher = random_logits(rng, 2, 8, 16)
    center = rng.normal(size=(16,)).astype(np.float32)
    for c, momentum in ((center, 0.9), (center[None], 0.5)):
        got = center_update(c, teacher, momentum=momentum)
        assert got.shape == (16,) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, center_reference(c, teacher, momentum)[0], rtol=1e-5)
    # The crops flattened into the batch ([T * B, K]) give the same centre.
    np.testing.assert_allclose(
        center_update(center, teacher.reshape(16, 16)), center_update(center, teacher), rtol=1e-6
    )
    grad = jax.jit(jax.grad(lambda c, t: jnp.sum(losses.dino_center_update(c, t)), (0, 1)))
    for g in grad(center, teacher):
        np.testing.assert_array_equal(g, 0.0)


def test_dino_bfloat16_inputs_give_finite_float32():
    rng = np.random.default_rng(3)
    student, teacher = random_logits(rng, 6, 8, 16), random_logits(rng, 2, 8, 16)
    center = rng.normal(size=(16,)).astype(np.float32)
    base = dino(student, teacher, center)
    low = dino(student.astype(jnp.bfloat16), teacher.astype(jnp.bfloat16), center)
    assert low.dtype == jnp.float32 and np.isfinite(low)
    np.testing.assert_allclose(low, base, rtol=5e-2)
    new_center = center_update(center.astype(jnp.bfloat16), teacher.astype(jnp.bfloat16))
    assert new_center.dtype == jnp.float32 and np.all(np.isfinite(new_center))


def test_dino_sharded_equals_single_device():
    """The batch split over 8 devices: the global-batch means give the 1-device values."""
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(4)
    b, k = 32, 24
    student, teacher = random_logits(rng, 6, b, k), random_logits(rng, 2, b, k)
    center = rng.normal(size=(k,)).astype(np.float32)
    crops = NamedSharding(mesh, P(None, "data"))
    fn = jax.jit(jax.value_and_grad(losses.dino))
    v1, g1 = fn(student, teacher, center)
    s8, t8 = jax.device_put(student, crops), jax.device_put(teacher, crops)
    c8 = jax.device_put(center, parallel.replicated(mesh))
    v8, g8 = fn(s8, t8, c8)
    assert len(g8.sharding.device_set) == 8
    np.testing.assert_allclose(v8, v1, rtol=1e-5)
    np.testing.assert_allclose(v1, dino_reference(student, teacher, center, 0.1, 0.04)[0], 1e-5)
    np.testing.assert_allclose(g8, g1, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(center_update(c8, t8), center_update(center, teacher), rtol=1e-5)


# ------------------------------------------------------------------ the method

LOCAL = (("num_local_views", 2),)


def test_eight_devices_equal_one_with_local_crops():
    mc.assert_eight_devices_equal_one("dino", LOCAL)


def test_teacher_is_the_ema_of_the_student_and_the_centre_follows_its_global_crops():
    run = mc.two_steps("dino", 1, LOCAL)
    mesh, training, _, _ = mc.setup("dino", 1, LOCAL)
    method, net = training.method, training.net
    for before, after, step in (("state0", "state1", 0), ("state1", "state2", 1)):
        tau = np.float32(method.tau(step))
        old, new = run[before].extra["target"]["params"], run[after].params
        expected = jax.tree.map(lambda t, o, tau=tau: tau * t + (1 - tau) * o, old, new)
        mc.assert_trees_close(run[after].extra["target"]["params"], expected, rtol=1e-6,
                              atol=1e-8)  # fmt: skip
    # The centre after step 1: 0.9 x 0 + 0.1 x the mean teacher output over the 2 GLOBAL crops
    # (training mode, as the teacher runs), never the local ones.
    batch = mc.batch(mesh, sizes=[r.size for r in training.recipes])
    teacher = jax.jit(
        lambda v, views: net.apply(v, views, train=True, method="target", mutable=["batch_stats"])[
            0
        ]["projections"]
    )
    logits = teacher(run["state0"].extra["target"], batch["views"][:2])  # [2B, K]
    np.testing.assert_allclose(run["state1"].extra["center"], 0.1 * np.mean(logits, axis=0),
                               rtol=1e-4, atol=1e-7)  # fmt: skip
    # What is evaluated and exported is the teacher's backbone.
    exported = method.encoder_variables(run["state2"])
    mc.assert_trees_close(exported["params"], run["state2"].extra["target"]["params"]["backbone"],
                          rtol=0, atol=0)  # fmt: skip


def test_last_layer_is_weight_normalised_and_frozen_in_the_first_epoch():
    run = mc.two_steps("dino", 1, LOCAL)  # steps_per_epoch 5: both steps in the first epoch
    np.testing.assert_array_equal(run["state2"].params["last_layer"]["kernel"],
                                  run["state0"].params["last_layer"]["kernel"])  # fmt: skip
    # LARS moves each kernel by ~lr x 0.001 of its norm: any change counts, not a tolerance.
    assert np.any(run["state2"].params["head"]["dense1"]["kernel"]
                  != run["state0"].params["head"]["dense1"]["kernel"])  # fmt: skip
    # Unit-norm head output times unit-norm columns: every logit is a cosine.
    mesh, training, state, _ = mc.setup("dino", 1, LOCAL)
    views = mc.batch(mesh, sizes=[r.size for r in training.recipes])
    logits = jax.jit(lambda v, x: training.net.apply(v, x)["projections"])(
        {"params": state.params, "batch_stats": state.batch_stats}, views["views"]
    )
    assert np.abs(np.asarray(logits)).max() <= 1 + 1e-5

    # frozen_until: updates (and weight decay) are zero for the first steps, then flow.
    tx = optim.frozen_until(optax_sgd_with_decay(), 2)
    params = {"w": jnp.ones(3)}
    state_ = tx.init(params)
    for step in range(3):
        updates, state_ = tx.update({"w": jnp.ones(3)}, state_, params)
        assert (np.abs(updates["w"]).sum() > 0) == (step >= 2), step


def optax_sgd_with_decay():
    return optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.5, momentum=0.9))


def test_per_tensor_clipping_and_the_weight_decay_schedule():
    grads = {"big": jnp.full((4,), 10.0), "small": jnp.full((2,), 0.1)}
    clipped, _ = optim.clip_per_tensor(3.0).update(grads, None)
    np.testing.assert_allclose(np.linalg.norm(clipped["big"]), 3.0, rtol=1e-5)  # its own norm
    np.testing.assert_array_equal(clipped["small"], grads["small"])  # untouched, not rescaled
    schedule = optim.cosine_between(0.04, 0.4, 100)
    np.testing.assert_allclose([schedule(0), schedule(50), schedule(100), schedule(200)],
                               [0.04, 0.22, 0.4, 0.4], rtol=1e-5)  # fmt: skip


def test_resume_reproduces_losses(tmp_path):
    """Killed after the step-2 checkpoint and rerun: steps 3-4 log the same losses, which needs
    the teacher (EMA parameters and BN statistics) and the centre restored with the student."""
    mc.assert_resume_reproduces_losses("dino", tmp_path)
