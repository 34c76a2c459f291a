"""Linear evaluation on frozen features, `frozen_features` protocol: L2-regularised multinomial
logistic regression solved to convergence, its L2 strength chosen on held-out TRAIN examples.

This is the protocol of Kornblith et al. (2019), which SimCLR and BYOL use for their transfer
tables: features of un-augmented images computed once, a convex objective solved
with L-BFGS, the regularisation picked on a validation part of the train split, and a final fit
on the whole train split. The test split's labels are used only to score the final classifier.

Objective, for standardised features x (train mean and std) and weights W [D, C], bias b [C]:

    mean_i CE(softmax(x_i W + b), y_i) + l2 / 2 * ||W||^2

The bias is not regularised. Zero initialisation and a deterministic solver make the result a
function of the data and l2 alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax.evaluate.classifier import top_k_correct
from ssl_jax.evaluate.linear import LinearProbe, linear_probe_predict


def _standardise(feats: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    return (feats.astype(jnp.float32) - mean) / std


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iterations"))
def _solve(x, labels, l2, tolerance, *, num_classes: int, max_iterations: int):
    """L-BFGS on the objective above, from zeros. Returns (params, iterations, gradient norm)."""
    d = x.shape[1]
    params = {"kernel": jnp.zeros((d, num_classes)), "bias": jnp.zeros((num_classes,))}

    def objective(p):
        logits = x @ p["kernel"] + p["bias"]  # [N, C]
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return ce + 0.5 * l2 * jnp.sum(p["kernel"] ** 2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        p, state, _, it = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(p, updates), state, optax.tree.norm(grad), it + 1

    def not_done(carry):
        _, _, grad_norm, it = carry
        return (it < max_iterations) & (grad_norm > tolerance)

    init = (params, solver.init(params), jnp.float32(jnp.inf), jnp.int32(0))
    params, _, grad_norm, iterations = jax.lax.while_loop(not_done, step, init)
    return params, iterations, grad_norm


def fit_logistic_regression(
    feats,
    labels,
    num_classes: int,
    *,
    l2: float,
    mean=None,
    std=None,
    max_iterations: int = 1000,
    tolerance: float = 1e-5,
) -> LinearProbe:
    """Fits the objective in the module docstring to convergence (full batch, L-BFGS).

    Args:
      feats: [N, D] features, any float dtype.
      labels: [N] integer labels in [0, num_classes).
      num_classes: C.
      l2: the L2 strength on the kernel.
      mean, std: [D] standardisation statistics; default: those of `feats`. Few-shot fits pass
        the statistics of the whole (unlabelled) train split, which a handful of examples cannot
        estimate.
      max_iterations: L-BFGS iterations at most.
      tolerance: stop once the gradient's global norm is below this.

    Returns:
      A LinearProbe (it standardises raw features itself), usable with linear_probe_predict.
    """
    feats = jnp.asarray(feats, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    if feats.ndim != 2 or labels.shape != feats.shape[:1] or feats.shape[0] == 0:
        raise ValueError(f"expected [N, D] features and [N] labels with N > 0, got "
                         f"{feats.shape} and {labels.shape}")  # fmt: skip
    if mean is None:
        mean = jnp.mean(feats, axis=0)
    if std is None:
        std = jnp.std(feats, axis=0)
    # The floor keeps constant (dead) dimensions at zero instead of dividing by zero.
    mean, std = jnp.asarray(mean, jnp.float32), jnp.maximum(jnp.asarray(std, jnp.float32), 1e-6)
    params, _, _ = _solve(
        _standardise(feats, mean, std),
        labels,
        jnp.float32(l2),
        jnp.float32(tolerance),
        num_classes=num_classes,
        max_iterations=max_iterations,
    )
    return LinearProbe(mean, std, params["kernel"], params["bias"])


def top_k_accuracy(probe: LinearProbe, feats, labels, k: int) -> float:
    """Fraction of rows whose label is among the probe's k highest-scoring classes."""
    logits = _standardise(jnp.asarray(feats), probe.mean, probe.std) @ probe.kernel + probe.bias
    return float(np.mean(top_k_correct(np.asarray(logits), np.asarray(labels), k)))


def holdout_split(num_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit ids, held-out ids) of the train split, a seeded permutation, both sorted."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    held = max(1, round(fraction * num_examples))
    if held >= num_examples:
        raise ValueError(f"{num_examples} train examples cannot spare {held} for validation")
    order = np.random.default_rng(np.random.SeedSequence([seed, num_examples])).permutation(
        num_examples
    )
    return np.sort(order[held:]), np.sort(order[:held])


def frozen_features_linear(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    num_classes: int,
    *,
    l2_grid,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    max_iterations: int = 1000,
) -> dict:
    """The `frozen_features` protocol: choose l2 on held-out train examples, refit, score.

    Selection sees only the train split (test_labels only score the final fit): a fit on
    (1 - holdout_fraction) of it per l2, scored by top-1 on the rest; the best l2 (the larger
    one on a tie: the simpler model) is refitted on the whole train split and scored on the test
    split.

    Args:
      l2_grid: the L2 strengths to choose from (configs: half-decades over 1e-6..1e2).
      holdout_fraction: the part of the train split held out to choose l2.
      seed: which examples are held out.
      max_iterations: L-BFGS iterations per fit at most.

    Returns:
      {"top1", "top5", "l2", "validation_top1": {l2: accuracy}} with accuracies as floats.
    """
    train_feats, train_labels = np.asarray(train_feats), np.asarray(train_labels)
    fit_ids, held_ids = holdout_split(len(train_labels), holdout_fraction, seed)
    validation = {}
    for l2 in sorted(l2_grid):
        probe = fit_logistic_regression(train_feats[fit_ids], train_labels[fit_ids], num_classes,
                                        l2=l2, max_iterations=max_iterations)  # fmt: skip
        validation[l2] = top_k_accuracy(probe, train_feats[held_ids], train_labels[held_ids], 1)
    best = max(validation.values())
    chosen = max(l2 for l2, acc in validation.items() if acc == best)
    probe = fit_logistic_regression(train_feats, train_labels, num_classes, l2=chosen,
                                    max_iterations=max_iterations)  # fmt: skip
    return {
        "top1": top_k_accuracy(probe, test_feats, test_labels, 1),
        "top5": top_k_accuracy(probe, test_feats, test_labels, 5),
        "l2": chosen,
        "validation_top1": validation,
    }


__all__ = [
    "fit_logistic_regression",
    "frozen_features_linear",
    "holdout_split",
    "linear_probe_predict",
    "top_k_accuracy",
]
