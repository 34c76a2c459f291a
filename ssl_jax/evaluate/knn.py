"""Weighted k-nearest-neighbour classification on frozen features.

The monitor used by most SSL papers since Wu et al. 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination" (InstDisc), Sec. 3.4; solo-learn's WeightedKNNClassifier
and the DINO / MoCo kNN monitors compute the same thing. For a test feature x:

    s_i = cos(x, f_i)                              for every training feature f_i
    N_k = indices of the k largest s_i
    score(c) = sum_{i in N_k, y_i = c} exp(s_i / t)
    prediction = argmax_c score(c)     (top-5: the five classes of largest score)

Test rows are processed in chunks so that the similarity matrix held at any time is
[chunk_size, N] rather than [M, N]: with N = 50k training images and M = 10k test images the full
matrix would be 2 GB in float32.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.losses import l2_normalize


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "num_ranked"))
def _knn_chunk(
    train_unit: jax.Array,
    train_labels: jax.Array,
    test_chunk: jax.Array,
    temperature: jax.Array,
    *,
    k: int,
    num_classes: int,
    num_ranked: int,
) -> jax.Array:
    """[C, num_ranked] classes by descending score for one chunk of test rows; train_unit is
    already l2-normalised."""
    test_unit = l2_normalize(test_chunk)  # [C, D]
    sim = test_unit @ train_unit.T  # [C, N]
    top_sim, top_idx = jax.lax.top_k(sim, k)  # [C, k], sorted descending
    top_labels = train_labels[top_idx]  # [C, k]
    # Subtracting the row's largest similarity rescales every weight of that row by the same
    # factor, so the argmax is unchanged, while exp(1 / t) would overflow float32 for t < ~0.012.
    # A max, not the slice top_sim[:, :1]: with the slice, XLA:CPU rewrites top_k into a full
    # sort of the [C, N] row, 13x slower at N = 10k.
    row_max = jnp.max(top_sim, axis=-1, keepdims=True)  # [C, 1]
    weights = jnp.exp((top_sim - row_max) / temperature)  # [C, k]
    # A scatter-add instead of a one-hot einsum: the one-hot would be [C, k, classes], 800 MB at
    # C = 1024, k = 200 and 1000 classes.
    rows = jnp.broadcast_to(jnp.arange(top_labels.shape[0])[:, None], top_labels.shape)  # [C, k]
    scores = jnp.zeros((top_labels.shape[0], num_classes), jnp.float32)  # [C, classes]
    scores = scores.at[rows, top_labels].add(weights)
    # top_k breaks ties towards the lower index, as argmax does.
    return jax.lax.top_k(scores, num_ranked)[1].astype(jnp.int32)  # [C, num_ranked]


def knn_classify(
    train_feats: jax.Array,
    train_labels: jax.Array,
    test_feats: jax.Array,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> jax.Array:
    """Weighted kNN predictions (Wu et al. 2018) for every test feature.

    Both sides are l2-normalised in float32, so the similarity is the cosine. Each of the k most
    similar training features votes for its label with weight exp(cos / temperature); the class
    with the largest summed weight wins (ties go to the lowest class index).

    This is a host-level driver, not a jit-able function: it loops over chunks of test rows and
    calls one jitted chunk function (the last chunk is padded, so there is a single compilation).
    Peak memory is O(chunk_size * N).

    Args:
      train_feats: [N, D] training features (any float dtype).
      train_labels: [N] integer labels in [0, num_classes).
      test_feats: [M, D] features to classify.
      k: number of neighbours (InstDisc and solo-learn: 200); clipped to N.
      temperature: t > 0 of the vote weights (InstDisc: 0.07).
      num_classes: number of classes; defaults to max(train_labels) + 1, which needs concrete
        labels.
      chunk_size: test rows per chunk.

    Returns:
      [M] int32 predicted labels.
    """
    ranked = knn_ranked_classes(
        train_feats, train_labels, test_feats, k, temperature, num_classes, chunk_size, 1
    )
    return ranked[:, 0]


def knn_ranked_classes(
    train_feats: jax.Array,
    train_labels: jax.Array,
    test_feats: jax.Array,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    num_ranked: int = 5,
) -> jax.Array:
    """The num_ranked classes of largest weighted-kNN score for every test feature, best first.

    The vote, the arguments and the chunking are knn_classify's; column 0 is its prediction, and
    a label among the first five columns is a top-5 hit.

    Args:
      num_ranked: how many classes to rank; clipped to num_classes.

    Returns:
      [M, min(num_ranked, num_classes)] int32 class indices.
    """
    train_feats = jnp.asarray(train_feats)
    test_feats = jnp.asarray(test_feats)
    train_labels = jnp.asarray(train_labels).astype(jnp.int32)
    n, m = train_feats.shape[0], test_feats.shape[0]
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"expected [N, D] and [M, D] features, got {train_feats.shape} and {test_feats.shape}"
        )
    if train_labels.shape != (n,):
        raise ValueError(f"train_labels has shape {train_labels.shape}, expected ({n},)")
    if n == 0:
        raise ValueError("knn_classify needs at least one training feature")
    if k < 1 or chunk_size < 1 or temperature <= 0:
        raise ValueError(
            f"need k >= 1, chunk_size >= 1, temperature > 0; got {k}, {chunk_size}, {temperature}"
        )
    if num_classes is None:
        num_classes = int(np.asarray(train_labels).max()) + 1
    num_ranked = max(1, min(num_ranked, num_classes))
    if m == 0:
        return jnp.zeros((0, num_ranked), jnp.int32)

    k = min(k, n)
    # A chunk never needs to be larger than the test set; this avoids padding 10 rows to 1024.
    chunk = min(chunk_size, m)
    num_chunks = -(-m // chunk)
    padded = jnp.pad(test_feats, ((0, num_chunks * chunk - m), (0, 0)))  # [num_chunks * C, D]
    train_unit = l2_normalize(train_feats)  # [N, D], normalised once for all chunks
    t = jnp.float32(temperature)
    preds = [
        _knn_chunk(
            train_unit,
            train_labels,
            padded[i * chunk : (i + 1) * chunk],
            t,
            k=k,
            num_classes=num_classes,
            num_ranked=num_ranked,
        )
        for i in range(num_chunks)
    ]
    return jnp.concatenate(preds)[:m]  # [M, num_ranked]


def knn_top1(
    train_feats: jax.Array,
    train_labels: jax.Array,
    test_feats: jax.Array,
    test_labels: jax.Array,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of knn_classify on labelled test features.

    Args:
      train_feats, train_labels, test_feats, k, temperature, num_classes, chunk_size: as in
        knn_classify.
      test_labels: [M] integer labels of test_feats.

    Returns:
      The fraction of test rows whose prediction equals their label, as a Python float.
    """
    return knn_accuracy(
        train_feats, train_labels, test_feats, test_labels, k, temperature, num_classes, chunk_size
    )["top1"]


def knn_accuracy(
    train_feats: jax.Array,
    train_labels: jax.Array,
    test_feats: jax.Array,
    test_labels: jax.Array,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: fractions of test rows whose label is the kNN prediction, or
    among its five best classes (top-5 is 1.0 with 5 classes or fewer)."""
    ranked = knn_ranked_classes(
        train_feats, train_labels, test_feats, k, temperature, num_classes, chunk_size, 5
    )
    test_labels = jnp.asarray(test_labels).astype(jnp.int32)
    if test_labels.shape != ranked.shape[:1]:
        raise ValueError(f"test_labels has shape {test_labels.shape}, expected {ranked.shape[:1]}")
    if ranked.shape[0] == 0:
        return {"top1": float("nan"), "top5": float("nan")}
    hits = ranked == test_labels[:, None]  # [M, R]
    return {"top1": float(jnp.mean(hits[:, 0])), "top5": float(jnp.mean(jnp.any(hits, axis=1)))}
