"""Representation-health metrics on a batch of embeddings, logged beside every method's loss.

Both metrics detect collapse without labels:
- embedding_std falls to 0 when every embedding points the same way (complete collapse);
- effective_rank falls towards 1 when the embeddings span only a few directions (dimensional
  collapse), which embedding_std can miss.

Both are pure jnp functions, jit-able, and reduce over the whole (global) batch they are given.
"""

import jax
import jax.numpy as jnp

from ssl_jax.losses import l2_normalize

_EPS = 1e-12


def embedding_std(z: jax.Array) -> jax.Array:
    """Mean over dimensions of the per-dimension std of the l2-normalised embeddings.

    The collapse monitor of SimSiam (Chen & He 2021, Sec. 4.1 and Fig. 2): with u_i = z_i / |z_i|,

        embedding_std = 1 / D * sum_d sqrt( 1 / N * sum_i (u_id - mean_i u_id)^2 )

    i.e. the population std (ddof = 0) over the batch axis 0, then the mean over the D
    dimensions. For isotropic embeddings each coordinate of a unit vector has variance 1 / D, so
    the value is about 1 / sqrt(D); it is 0 when all rows point the same way.

    Args:
      z: [N, D] embeddings (any float dtype; computed in float32).

    Returns:
      Scalar float32.
    """
    u = l2_normalize(z)  # [N, D], float32
    return jnp.mean(jnp.std(u, axis=0))  # std over the batch, mean over the D dimensions


def effective_rank(z: jax.Array) -> jax.Array:
    """Effective rank of a batch of embeddings (Roy & Vetterli 2007), as in RankMe.

    With s_1..s_r the singular values of the batch-centred embeddings z - mean_i z_i (the square
    roots of the eigenvalues of their covariance, up to the factor N):

        p_k = s_k / sum_j s_j
        effective_rank = exp( -sum_k p_k log p_k )          (with 0 log 0 = 0)

    It lies in [1, min(N, D)]: D for a whitened full-rank batch (equal singular values), 1 when
    the centred embeddings are rank one. Unlike RankMe (Garrido et al. 2023), which uses the raw
    embeddings, we centre them first so that a shared offset (a common mean vector) does not count
    as a direction. Computed in float32 whatever the input dtype, because bfloat16 singular
    values are too coarse for the small ones that decide the rank. Returns 1 for an all-zero
    batch.

    Args:
      z: [N, D] embeddings (any float dtype).

    Returns:
      Scalar float32.
    """
    z = z.astype(jnp.float32)
    zc = z - jnp.mean(z, axis=0, keepdims=True)  # [N, D], centred over the batch
    s = jnp.linalg.svd(zc, compute_uv=False)  # [min(N, D)]
    p = s / jnp.maximum(jnp.sum(s), _EPS)  # [min(N, D)]
    entropy = -jnp.sum(jax.scipy.special.xlogy(p, p))
    return jnp.exp(entropy)


class CollapseMonitor:
    """Warns once when the embedding std stays below 0.1 / sqrt(D) for `window` steps in a row.

    Healthy l2-normalised embeddings have a per-dimension std near 1 / sqrt(D) (embedding_std
    above); a tenth of that held for a sustained stretch is collapse, not noise. The run goes on:
    some methods recover, and the user decides.
    """

    def __init__(self, dim: int, window: int = 20):
        self.threshold = 0.1 / float(dim) ** 0.5
        self.window = window
        self._low_since = None
        self._warned = False

    def update(self, step: int, std: float) -> str | None:
        """Feed one step's embedding_std; returns a warning the first time collapse is sustained."""
        if std >= self.threshold:
            self._low_since, self._warned = None, False
            return None
        if self._low_since is None:
            self._low_since = step
        if not self._warned and step - self._low_since + 1 >= self.window:
            self._warned = True
            return (
                f"representation collapse at step {step}: embedding_std {std:.2e} has stayed "
                f"below 0.1/sqrt(D) = {self.threshold:.2e} since step {self._low_since}. The run "
                "continues; check the learning rate, EMA rate, temperature or loss weights."
            )
        return None
