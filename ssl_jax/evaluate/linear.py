"""Offline linear evaluation on frozen, precomputed features.

This is the fast variant of the linear-evaluation protocol: a softmax linear classifier trained
on features extracted once, without data augmentation. The papers' protocol (SimCLR Appendix B.5,
BYOL Appendix C.1, solo-learn's linear.py) trains the classifier on features of randomly cropped
and flipped images for 90-100 epochs, recomputing the frozen encoder every step; it reports a
point or two more than this variant. Use this one for the demo and for monitoring during
pretraining, where seconds matter and the trend is what counts, and label it as such.

Recipe: standardise the features with the train mean and std, then minimise the mean softmax
cross-entropy over the train set with AdamW (decoupled weight decay on the kernel only) and a
warmup + cosine learning rate, on minibatches drawn with replacement. The whole training run is
one jitted lax.fori_loop.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class LinearProbe(NamedTuple):
    """A fitted probe; it takes raw (unstandardised) features, see linear_probe_predict."""

    mean: jax.Array  # [D] train feature mean
    std: jax.Array  # [D] train feature std (floored)
    kernel: jax.Array  # [D, classes]
    bias: jax.Array  # [classes]


def _logits(probe: LinearProbe, feats: jax.Array) -> jax.Array:
    x = (feats.astype(jnp.float32) - probe.mean) / probe.std  # [N, D]
    return x @ probe.kernel + probe.bias  # [N, classes]


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch_size"))
def _fit(
    feats: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    lr: jax.Array,
    weight_decay: jax.Array,
    *,
    num_classes: int,
    steps: int,
    batch_size: int,
) -> LinearProbe:
    feats = feats.astype(jnp.float32)
    mean = jnp.mean(feats, axis=0)  # [D], over the whole train set
    # The floor keeps constant (dead) feature dimensions at zero instead of dividing by zero.
    std = jnp.maximum(jnp.std(feats, axis=0), 1e-6)  # [D]
    x_all = (feats - mean) / std  # [N, D]
    n, d = x_all.shape

    warmup = max(steps // 20, 1)
    # The unit-peak schedule times a traced lr: lr stays a runtime value, so sweeping it does not
    # recompile.
    unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(steps, warmup + 1))
    schedule = lambda count: lr * unit(count)
    # Decay the kernel, not the bias: decaying a bias only biases the class priors.
    tx = optax.adamw(schedule, weight_decay=weight_decay, mask={"kernel": True, "bias": False})
    # Zero init: the problem is convex, and zeros make the result independent of the init key.
    params = {"kernel": jnp.zeros((d, num_classes)), "bias": jnp.zeros((num_classes,))}
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
        logits = x @ params["kernel"] + params["bias"]  # [B, classes]
        # Mean over the minibatch.
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def body(step, carry):
        params, opt_state = carry
        idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n)  # [B]
        grads = jax.grad(loss_fn)(params, x_all[idx], labels[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, body, (params, opt_state))
    return LinearProbe(mean, std, params["kernel"], params["bias"])


def fit_linear_probe(
    train_feats: jax.Array,
    train_labels: jax.Array,
    num_classes: int,
    *,
    steps: int = 1500,
    lr: float = 3e-2,
    weight_decay: float = 1e-3,
    batch_size: int = 1024,
    seed: int = 0,
) -> LinearProbe:
    """Trains a softmax linear classifier on standardised frozen features.

    Args:
      train_feats: [N, D] features (any float dtype).
      train_labels: [N] integer labels in [0, num_classes).
      num_classes: number of classes.
      steps: optimiser steps; with the default batch this is ~150 epochs of 10k examples.
      lr: peak AdamW learning rate (reached after a 5% linear warmup, then cosine to zero).
      weight_decay: AdamW decoupled weight decay on the kernel (not the bias). The default barely
        regularises, which suits large feature sets; raise it (e.g. 0.1-1) when there are few
        training examples per feature dimension.
      batch_size: minibatch size, drawn with replacement; clipped to N.
      seed: seed of the minibatch sampling.

    Returns:
      The fitted LinearProbe (it holds the standardisation statistics).
    """
    train_feats = jnp.asarray(train_feats)
    train_labels = jnp.asarray(train_labels).astype(jnp.int32)
    if train_feats.ndim != 2 or train_labels.shape != train_feats.shape[:1]:
        raise ValueError(
            f"expected [N, D] features and [N] labels, got {train_feats.shape}, "
            f"{train_labels.shape}"
        )
    if train_feats.shape[0] == 0 or steps < 1 or batch_size < 1:
        raise ValueError("need at least one training example, steps >= 1 and batch_size >= 1")
    return _fit(
        train_feats,
        train_labels,
        jax.random.key(seed),
        jnp.float32(lr),
        jnp.float32(weight_decay),
        num_classes=num_classes,
        steps=steps,
        batch_size=min(batch_size, train_feats.shape[0]),
    )


def linear_probe_predict(probe: LinearProbe, feats: jax.Array) -> jax.Array:
    """[M] int32 predicted labels of a fitted probe for raw [M, D] features."""
    return jnp.argmax(_logits(probe, jnp.asarray(feats)), axis=-1).astype(jnp.int32)


def linear_probe_top1(
    train_feats: jax.Array,
    train_labels: jax.Array,
    test_feats: jax.Array,
    test_labels: jax.Array,
    num_classes: int,
    *,
    steps: int = 1500,
    lr: float = 3e-2,
    weight_decay: float = 1e-3,
    batch_size: int = 1024,
    seed: int = 0,
) -> float:
    """Test top-1 accuracy of a linear classifier trained on frozen train features.

    A linear probe without augmentation (see the module docstring for how it differs from the
    papers' offline protocol). The defaults come within about half a point of the converged test
    accuracy for 10k x 512 features (10 classes) in a few seconds on two CPU cores.

    Args:
      train_feats: [N, D] train features.
      train_labels: [N] integer train labels.
      test_feats: [M, D] test features.
      test_labels: [M] integer test labels.
      num_classes: number of classes.
      steps, lr, weight_decay, batch_size, seed: as in fit_linear_probe.

    Returns:
      The fraction of test rows classified correctly, as a Python float.
    """
    probe = fit_linear_probe(
        train_feats,
        train_labels,
        num_classes,
        steps=steps,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
    )
    preds = linear_probe_predict(probe, test_feats)  # [M]
    test_labels = jnp.asarray(test_labels).astype(jnp.int32)
    if test_labels.shape != preds.shape:
        raise ValueError(f"test_labels has shape {test_labels.shape}, expected {preds.shape}")
    return float(jnp.mean(preds == test_labels))
