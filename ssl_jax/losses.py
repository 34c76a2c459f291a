"""Self-supervised losses as pure functions of arrays.

Every function here is written for the GLOBAL batch: under jit with the batch sharded over the
`data` mesh axis, XLA inserts the cross-device reductions, so the value is the same on 1 or N
devices. Each docstring gives the paper, the formula and the reduction, because reference
implementations disagree on reductions and users compare against them.

Losses are evaluated in float32 whatever the compute dtype of the network: softmax denominators
over thousands of negatives overflow or lose all precision in bfloat16.
"""

import jax
import jax.numpy as jnp

_EPS = 1e-12


def _l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS))


def nt_xent(z_a: jax.Array, z_b: jax.Array, temperature: float) -> jax.Array:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

    Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
    Algorithm 1 and Eq. (1). With the 2N views u = l2_normalize(concat(z_a, z_b)):

        l(i, j) = -log( exp(u_i . u_j / t) / sum_{k != i} exp(u_i . u_k / t) )
        L = 1 / (2N) * sum_{k=1..N} [ l(2k-1, 2k) + l(2k, 2k-1) ]

    Every anchor has one positive (the other view of its image) and 2N - 2 negatives (both
    views of every other image in the global batch). The reduction is the mean over all 2N
    anchors of the global batch.

    Memory: the [2N, 2N] similarity matrix is never replicated. Its rows follow the sharding of
    the inputs (rows over the `data` axis), so each device holds [2N / devices, 2N]; the
    log-sum-exp is over the unsharded axis 1 and the final mean is one cross-device sum.

    Args:
      z_a: [N, D] projections of the first view (any float dtype).
      z_b: [N, D] projections of the second view; row k is the same image as z_a's row k.
      temperature: t > 0 (SimCLR: 0.1 for large batches, 0.5 for CIFAR-10 in the appendix).

    Returns:
      Scalar float32 loss. Its value for an uninformative embedding is log(2N - 1).
    """
    n = z_a.shape[0]
    u = _l2_normalize(jnp.concatenate([z_a, z_b], axis=0))  # [2N, D], float32
    logits = (u @ u.T) / temperature  # [2N, 2N]; rows sharded like u
    # An anchor is not its own negative: remove the diagonal from the softmax denominator.
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    positive_index = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])  # [2N]
    positive_logit = jnp.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]  # [2N]
    per_anchor = jax.nn.logsumexp(logits, axis=1) - positive_logit  # [2N]
    return jnp.mean(per_anchor)  # mean over the 2N anchors of the global batch
