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


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / ||x|| along `axis`, in float32; an all-zero vector stays zero instead of NaN."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), _EPS))


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
    u = l2_normalize(jnp.concatenate([z_a, z_b], axis=0))  # [2N, D], float32
    logits = (u @ u.T) / temperature  # [2N, 2N]; rows sharded like u
    # An anchor is not its own negative: remove the diagonal from the softmax denominator.
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    positive_index = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])  # [2N]
    positive_logit = jnp.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]  # [2N]
    per_anchor = jax.nn.logsumexp(logits, axis=1) - positive_logit  # [2N]
    return jnp.mean(per_anchor)  # mean over the 2N anchors of the global batch


def info_nce(q: jax.Array, k: jax.Array, queue: jax.Array | None, temperature: float) -> jax.Array:
    """InfoNCE of MoCo: each query against its key and a set of negatives, cross-entropy.

    With q_i = l2_normalize(q)_i and k_i = l2_normalize(k)_i (stop_gradient on k):

    - MoCo v2 (He et al. 2020, Algorithm 1; Chen et al. 2020b), `queue` [K, D] given:
          logits_i = [q_i . k_i, q_i . queue_1, ..., q_i . queue_K] / t      (positive at 0)
          L = 1 / N * sum_i -log softmax(logits_i)_0
      The queue holds l2-normalised keys of earlier batches; it gets no gradient.
    - MoCo v3 (Chen et al. 2021, Algorithm 1), `queue=None`: the negatives are the other keys of
      the GLOBAL batch:
          logits = q @ k.T / t   [N, N],   L = 1 / N * sum_i -log softmax(logits_i)_i
      MoCo v3's code multiplies this by 2t and sums both directions; that is the method's
      business (ssl_jax.methods.mocov3), not this function's.

    The reduction is the mean over the N queries of the GLOBAL batch. The [N, N] (or [N, 1 + K])
    logits keep the row sharding of q, so no device holds a replicated N x N matrix.

    Args:
      q: [N, D] queries (gradient flows).
      k: [N, D] keys; row i is the positive of query i. Treated as constant (stop_gradient).
      queue: [K, D] negatives (l2-normalised keys), or None for in-batch negatives.
      temperature: t > 0 (MoCo v2: 0.2; MoCo v3: 1.0 for ResNet-50, 0.2 for ViT).

    Returns:
      Scalar float32 loss; log(1 + K) (queue) or log(N) (in batch) for uninformative inputs.
    """
    q = l2_normalize(q)  # [N, D]
    k = jax.lax.stop_gradient(l2_normalize(k))  # [N, D]
    if queue is None:
        logits = (q @ k.T) / temperature  # [N, N], positives on the diagonal
        positive = jnp.diagonal(logits)  # [N]
    else:
        queue = jax.lax.stop_gradient(queue.astype(jnp.float32))  # [K, D]
        positive = jnp.sum(q * k, axis=-1) / temperature  # [N]
        negatives = (q @ queue.T) / temperature  # [N, K]
        logits = jnp.concatenate([positive[:, None], negatives], axis=1)  # [N, 1 + K]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)  # mean over the N queries


def byol(p: jax.Array, z: jax.Array) -> jax.Array:
    """BYOL's normalised regression loss (Grill et al. 2020, Eq. 2).

        L = 1 / N * sum_i || p_i / |p_i| - z_i / |z_i| ||^2  =  1 / N * sum_i (2 - 2 cos(p_i, z_i))

    The target z is a stop_gradient branch (the EMA network's projection); the mean is over the
    N rows of the GLOBAL batch. BYOL's total loss sums this over the two (view, other view)
    pairs; the method does that. The value lies in [0, 4]: 0 when p and z are parallel.

    Args:
      p: [N, D] online predictions (gradient flows).
      z: [N, D] target projections (stop_gradient).
    """
    p = l2_normalize(p)  # [N, D]
    z = jax.lax.stop_gradient(l2_normalize(z))  # [N, D]
    return jnp.mean(jnp.sum((p - z) ** 2, axis=-1))  # mean over the N rows


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
    """SimSiam's D(p, z) (Chen & He 2021, Eq. 1 and the stop-gradient of Eq. 3).

        D(p, z) = -1 / N * sum_i  p_i . stopgrad(z_i) / (|p_i| |z_i|)

    Mean over the N rows of the GLOBAL batch, in [-1, 1]. SimSiam's symmetrised loss is
    1/2 D(p1, z2) + 1/2 D(p2, z1); the method does that.

    Args:
      p: [N, D] predictions (gradient flows).
      z: [N, D] projections of the other view (stop_gradient: no gradient reaches z).
    """
    p = l2_normalize(p)  # [N, D]
    z = jax.lax.stop_gradient(l2_normalize(z))  # [N, D]
    return -jnp.mean(jnp.sum(p * z, axis=-1))  # mean over the N rows


def _standardize(z: jax.Array, eps: float) -> jax.Array:
    """Per dimension over the GLOBAL batch: (z - mean) / sqrt(var + eps), biased variance."""
    mean = jnp.mean(z, axis=0, keepdims=True)  # [1, D], over the global batch
    var = jnp.mean((z - mean) ** 2, axis=0, keepdims=True)  # [1, D]
    return (z - mean) * jax.lax.rsqrt(var + eps)


def barlow_twins(z_a: jax.Array, z_b: jax.Array, lambd: float) -> jax.Array:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, Eq. 1 and 2).

    Each embedding dimension is standardised over the GLOBAL batch of N (BatchNorm without
    affine parameters, biased variance, eps 1e-5, as the official code's SyncBN), then

        C_ij = 1 / N * sum_b za_bi * zb_bj                         [D, D] cross-correlation
        L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

    A sum over the D x D entries (no mean): lambd weighs D(D - 1) off-diagonal terms against
    D diagonal ones, so its best value depends on D (the paper's 5e-3 is for D = 8192; the
    official code uses 0.0051). The paper's ablation (section 4) finds accuracy flat over a
    wide range of lambd; configs/barlow_twins.py records what the demo measured at D = 512.

    Args:
      z_a: [N, D] embeddings of the first view.
      z_b: [N, D] embeddings of the second view.
      lambd: weight of the redundancy (off-diagonal) term, >= 0.
    """
    n = z_a.shape[0]
    za = _standardize(z_a.astype(jnp.float32), 1e-5)  # [N, D]
    zb = _standardize(z_b.astype(jnp.float32), 1e-5)  # [N, D]
    c = (za.T @ zb) / n  # [D, D], summed over the global batch
    on_diag = jnp.sum((1.0 - jnp.diagonal(c)) ** 2)
    off_diag = jnp.sum(c**2) - jnp.sum(jnp.diagonal(c) ** 2)
    return on_diag + lambd * off_diag


def vicreg(
    z_a: jax.Array, z_b: jax.Array, sim_coeff: float, std_coeff: float, cov_coeff: float
) -> jax.Array:
    """VICReg (Bardes et al. 2022, Eq. 1-6; gamma = 1, eps = 1e-4, as the official code).

        s(Z, Z')  = 1 / (N D) * sum_i || z_i - z'_i ||^2                invariance (MSE)
        v(Z)      = 1 / D * sum_j relu(1 - sqrt(Var_N(Z_:j) + eps))      variance hinge
        c(Z)      = 1 / D * sum_{i != j} Cov(Z)_ij^2,  Cov = Zc^T Zc / (N - 1)
        L = sim_coeff * s + std_coeff * (v(Z) + v(Z')) / 2 + cov_coeff * (c(Z) + c(Z'))

    All terms are over the GLOBAL batch of N (the official code all-gathers for v and c; its
    invariance term is on the local batch, which equals ours in expectation). The variance
    uses the unbiased estimator (N - 1), as torch.var. Solo-learn drops the / 2 on the
    variance term; we follow the official code.

    Args:
      z_a, z_b: [N, D] expander outputs of the two views.
      sim_coeff, std_coeff, cov_coeff: lambda, mu, nu (paper: 25, 25, 1).
    """
    z_a, z_b = z_a.astype(jnp.float32), z_b.astype(jnp.float32)
    n, d = z_a.shape
    invariance = jnp.mean((z_a - z_b) ** 2)  # mean over N x D

    def variance_and_covariance(z):
        zc = z - jnp.mean(z, axis=0, keepdims=True)  # [N, D], centred over the global batch
        std = jnp.sqrt(jnp.sum(zc**2, axis=0) / (n - 1) + 1e-4)  # [D]
        variance = jnp.mean(jax.nn.relu(1.0 - std))
        cov = (zc.T @ zc) / (n - 1)  # [D, D]
        covariance = (jnp.sum(cov**2) - jnp.sum(jnp.diagonal(cov) ** 2)) / d
        return variance, covariance

    var_a, cov_a = variance_and_covariance(z_a)
    var_b, cov_b = variance_and_covariance(z_b)
    return sim_coeff * invariance + std_coeff * (var_a + var_b) / 2 + cov_coeff * (cov_a + cov_b)


def distillation(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
    """SimCLR v2's distillation loss (Chen et al. 2020b, eq. 3), mean over the batch.

    -sum_y P_T(y | x; tau) log P_S(y | x; tau), both softmaxes at temperature tau; the teacher's
    distribution is a constant (stop_gradient).

    Args:
      student_logits: [N, C].
      teacher_logits: [N, C].
      temperature: tau > 0 (the paper's default: 1).
    """
    targets = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
    log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def sinkhorn(scores: jax.Array, iterations: int = 3, epsilon: float = 0.05) -> jax.Array:
    """SwAV's Sinkhorn-Knopp codes: equipartitioned soft assignments of the batch to prototypes.

    Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", section 3.1 and Algorithm 1; the official code's `distributed_sinkhorn`
    (facebookresearch/swav main_swav.py). With B samples (the GLOBAL batch) and P prototypes:

        Q = exp(scores / epsilon).T                       [P, B]
        Q = Q / sum(Q)
        repeat `iterations` times:
            Q = Q / Q.sum(axis=1, keepdims=True) / P      each prototype gets 1/P of the mass
            Q = Q / Q.sum(axis=0, keepdims=True) / B      each sample gets 1/B of the mass
        codes = (B * Q).T                                 [B, P], each row sums to 1

    The last normalisation is over prototypes, so every row of the codes sums to 1 exactly;
    the columns sum to B / P (the equipartition) once the iterations have converged (3 are
    few: the columns are only roughly equal). The official code all-reduces the per-prototype
    sums over GPUs and uses B = local batch x world size; here the sums over axis 0 of `scores`
    are over the global batch (cross-device reductions under jit), which is the same thing.

    Numerics: float32, in the log domain (log-sum-exp normalisations). It is the same algorithm:
    every step above divides rows or columns by a positive sum, which in logs is subtracting a
    log-sum-exp, and a constant added to all scores (the global max subtracted first, and the
    log-sum-exp's own max shifts) cancels in the first normalisation. Unlike exp(scores / 0.05)
    in float32 it neither overflows nor underflows a whole sample's column to 0 (0 / 0) for
    wide-spread scores.

    The codes are targets: returned under stop_gradient.

    Args:
      scores: [B, P] prototype scores z . c (before any temperature), any float dtype. With
        SwAV's queue, the method passes the queue's scores concatenated before the batch's and
        keeps the last B rows of the codes.
      iterations: number of (prototype, sample) normalisation rounds (SwAV: 3), >= 0.
      epsilon: entropic regularisation (SwAV: 0.05; lower is sharper).

    Returns:
      [B, P] float32 codes, each row a distribution over the prototypes.
    """
    b, p = scores.shape
    scores = jax.lax.stop_gradient(scores).astype(jnp.float32)  # [B, P]
    # Shifting all scores by a constant leaves the codes unchanged (it cancels in Q / sum(Q)).
    # Subtracting the global max BEFORE dividing by epsilon keeps the exponents small, so the
    # float32 rounding of s / epsilon (relative to |s / epsilon|) stays small too.
    log_q = (scores - jnp.max(scores)) / epsilon  # [B, P], log Q.T, <= 0
    log_q = log_q - jax.nn.logsumexp(log_q)  # Q / sum(Q), over the global batch
    log_b, log_p = jnp.log(jnp.float32(b)), jnp.log(jnp.float32(p))

    def normalise(_, log_q):
        # Per prototype (a sum over the batch axis: cross-device under sharding): mass 1 / P.
        log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - log_p
        # Per sample (over prototypes, local to a device): mass 1 / B.
        return log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - log_b

    log_q = jax.lax.fori_loop(0, iterations, normalise, log_q)  # one compiled body, any count
    return jax.lax.stop_gradient(jnp.exp(log_q + log_b))  # [B, P]: Q *= B, rows sum to 1


def _cross_entropy_matrix(targets: jax.Array, log_probs: jax.Array) -> jax.Array:
    """[A, B, K] targets, [C, B, K] log-probabilities -> [A, C]: -1/B sum_b sum_k t log p."""
    batch = targets.shape[1]
    return -jnp.einsum("abk,cbk->ac", targets, log_probs) / batch  # sums over the global batch


def _mean_over_other_crops(ce: jax.Array) -> jax.Array:
    """[A, C] cross-entropies, crop a of the targets = crop a of the predictions for a < A:
    the mean over the A x (C - 1) pairs with different crops."""
    a, c = ce.shape
    different = jnp.arange(a)[:, None] != jnp.arange(c)[None, :]  # [A, C]
    return jnp.sum(jnp.where(different, ce, 0.0)) / (a * (c - 1))


def swav(
    global_scores: jax.Array,
    local_scores: jax.Array | None,
    temperature: float = 0.1,
    iterations: int = 3,
    epsilon: float = 0.05,
    queue_scores: jax.Array | None = None,
    use_queue: bool | jax.Array = True,
) -> jax.Array:
    """SwAV's swapped prediction loss (Caron et al. 2020, Eq. 1-3; main_swav.py `train`).

    With the scores s_v = z_v . C of every crop v (V global crops, then L local crops; the
    prototypes C and the embeddings z l2-normalised by the method), the codes of each global
    crop q_i = sinkhorn(s_i, iterations, epsilon) (stop_gradient, computed per crop over the
    GLOBAL batch, as the code's loop over `crops_for_assign`), and p_v = softmax(s_v / t):

        l(i, v) = -1/B sum_b sum_p q_i[b, p] log p_v[b, p]
        loss = 1/V sum_{i < V} 1/(V + L - 1) sum_{v != i} l(i, v)

    i.e. for each global crop, the mean over all the other crops (the other global crops and
    every local crop) of the cross-entropy against its codes, then the mean over the global
    crops; each cross-entropy is a mean over the global batch. The official code divides the
    subloss by (num_crops - 1) and the total by len(crops_for_assign), the same numbers.

    With a queue (main_swav.py `--queue_length`, for small batches), global crop i's codes are
    computed over its queue's K stored embeddings and the batch together, and only the batch's
    rows are kept: q_i = sinkhorn([queue_scores_i; s_i])[K:]. The queue only widens the
    equipartition; the cross-entropies are still over the batch alone. `use_queue` (a Python or
    traced bool) selects between the two codes, so a step can switch the queue on without
    retracing (the official code switches once the queue is full).

    Args:
      global_scores: [V, B, P] scores of the V >= 2 global crops (these give the codes).
      local_scores: [L, B, P] scores of the local crops, or None.
      temperature: t of the predictions' softmax (SwAV: 0.1).
      iterations: Sinkhorn iterations (SwAV: 3).
      epsilon: Sinkhorn's regularisation (SwAV: 0.05).
      queue_scores: [V, K, P] scores of each global crop's queue of past embeddings against the
        current prototypes, or None (no queue).
      use_queue: whether the codes include the queue (ignored without `queue_scores`).

    Returns:
      Scalar float32 loss; log(P) when all scores are equal.
    """
    global_scores = global_scores.astype(jnp.float32)
    if global_scores.shape[0] < 2:
        raise ValueError(f"swav needs at least 2 global crops, got {global_scores.shape[0]}")
    codes = jax.vmap(lambda s: sinkhorn(s, iterations, epsilon))(global_scores)  # [V, B, P]
    if queue_scores is not None:
        size = queue_scores.shape[1]
        with_queue = jax.vmap(
            lambda queue, s: sinkhorn(jnp.concatenate([queue, s]), iterations, epsilon)[size:]
        )(queue_scores.astype(jnp.float32), global_scores)  # [V, B, P]: the batch's rows
        codes = jnp.where(use_queue, with_queue, codes)
    crops = global_scores
    if local_scores is not None:
        crops = jnp.concatenate([global_scores, local_scores.astype(jnp.float32)], axis=0)
    log_probs = jax.nn.log_softmax(crops / temperature, axis=-1)  # [V + L, B, P]
    return _mean_over_other_crops(_cross_entropy_matrix(codes, log_probs))  # [V, V + L] -> ()


def dino(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    center: jax.Array,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> jax.Array:
    """DINO's self-distillation loss (Caron et al. 2021, Eq. 2-3 and Algorithm 1; main_dino.py
    `DINOLoss.forward`), without the centre update (see dino_center_update).

    With the teacher's crops t < T (the global crops) and the student's crops s < S (the same
    global crops first, in the same order, then the local crops):

        P_t = softmax((g_t - center) / teacher_temperature)     stop_gradient (centre included)
        log P_s = log_softmax(f_s / student_temperature)
        l(t, s) = -1/B sum_b sum_k P_t[b, k] log P_s[b, k]
        loss = 1 / (T (S - 1)) * sum_{t < T} sum_{s != t} l(t, s)

    The mean is over the T x S - T (teacher crop, student crop) pairs that are not the same
    crop (the code skips v == iq): 2 pairs for 2 global crops alone, 2 x 10 - 2 = 18 for
    2 + 8 local crops. Each l is a mean over the GLOBAL batch (the code's per-GPU mean, averaged
    by DDP's gradient all-reduce, is the same for equal per-GPU batches).

    Args:
      student_logits: [S, B, K] student outputs, the T global crops first (S >= T).
      teacher_logits: [T, B, K] teacher outputs of the global crops.
      center: [K] or [1, K] running centre of the teacher outputs.
      student_temperature: (DINO: 0.1).
      teacher_temperature: (DINO: 0.04, or the warm-up 0.04 -> 0.07 the method schedules).

    Returns:
      Scalar float32 loss.
    """
    num_teacher, num_student = teacher_logits.shape[0], student_logits.shape[0]
    if num_student < num_teacher or num_student < 2:
        raise ValueError(
            f"dino needs the student's crops to start with the teacher's {num_teacher} (and at "
            f"least 2 crops), got {num_student} student crops"
        )
    center = jnp.reshape(center.astype(jnp.float32), (-1,))  # [K]
    targets = jax.nn.softmax(
        (teacher_logits.astype(jnp.float32) - center) / teacher_temperature, axis=-1
    )
    targets = jax.lax.stop_gradient(targets)  # [T, B, K]
    log_probs = jax.nn.log_softmax(
        student_logits.astype(jnp.float32) / student_temperature, axis=-1
    )  # [S, B, K]
    return _mean_over_other_crops(_cross_entropy_matrix(targets, log_probs))  # [T, S] -> ()


def dino_center_update(
    center: jax.Array, teacher_logits: jax.Array, momentum: float = 0.9
) -> jax.Array:
    """DINO's centre EMA (Caron et al. 2021, Eq. 4; main_dino.py `DINOLoss.update_center`).

        center <- momentum * center + (1 - momentum) * mean_{crops, batch} g

    The mean is over every teacher crop and the GLOBAL batch. DINO's code sums over its local
    rows, all-reduces the sum over GPUs and divides by local batch x crops x world size; under
    jit with the batch sharded the mean here is that global mean (XLA inserts the reduction).
    No gradient: the centre is state, not a parameter.

    Args:
      center: [K] or [1, K] current centre.
      teacher_logits: [T, B, K] (or [T * B, K]) teacher outputs of this step.
      momentum: (DINO: 0.9).

    Returns:
      [K] float32 new centre.
    """
    k = teacher_logits.shape[-1]
    g = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    # Mean over every axis but K (no reshape: that would move the batch-sharded axis).
    batch_center = jnp.mean(g, axis=tuple(range(g.ndim - 1)))  # [K], crops and global batch
    center = jax.lax.stop_gradient(jnp.reshape(center.astype(jnp.float32), (k,)))
    return momentum * center + (1.0 - momentum) * batch_center
