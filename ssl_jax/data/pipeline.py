"""tf.data input pipelines: deterministic, resumable, sharded by host; uint8 numpy batches out.

Training order and augmentation are pure functions of (seed, step), not of pipeline state:

    spe = N // B                                   steps per epoch, remainder dropped
    e, j = s // spe, s % spe                       epoch and step within it, for global step s
    perm_e = np.random.default_rng((seed, e)).permutation(N)
    batch s = perm_e[j * B : (j + 1) * B]          the global batch; host p of P takes rows
                                                   [p * B / P, (p + 1) * B / P)
    key = fold_in(fold_in([seed, 0], e), i)         stateless seed of example i in epoch e
    view v of example i = augment_view(image_i, split(key, V)[v], recipe_v)

So a run resumed at step k (start_step=k) sees exactly the batches an uninterrupted run sees, and
the global batch is the same whatever the number of hosts.

Reading: each example is read with `source.read(index)` inside the parallel map that augments
it; a Source with a batched hook (`source.fetch`, e.g. TFDS array_record) is instead fetched once
per host batch of indices (`fetch(indices [b])`, a parallel map over batches), then decoded per
example (`source.decode`) in that same augmenting map. Images, and so batches, are the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ssl_jax.data import augment
from ssl_jax.data.sources import Source
from ssl_jax.errors import UserError


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Full global batches per epoch (the remainder is dropped).

    Raises:
        UserError: the batch is not positive or the dataset is smaller than one global batch.
    """
    if global_batch < 1:
        raise UserError(f"batch size must be positive, got {global_batch}")
    if num_examples < global_batch:
        raise UserError(
            f"the dataset has {num_examples} examples, fewer than one global batch of "
            f"{global_batch}; lower config.batch_size or use a larger dataset"
        )
    return num_examples // global_batch


def _host_rows(global_batch: int, process_index: int, process_count: int) -> tuple[int, int]:
    """This host's contiguous row range of every global batch."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process_index {process_index} not in [0, process_count={process_count})")
    if global_batch % process_count:
        raise UserError(
            f"batch size {global_batch} is not divisible by the {process_count} processes; "
            "pick a multiple of the process count"
        )
    local = global_batch // process_count
    return process_index * local, (process_index + 1) * local


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Parallelism comes from mapping many examples at once; letting each op also fan out over
    # threads only adds contention (the setting of the flax and big_vision input pipelines).
    options.threading.max_intra_op_parallelism = 1
    return options


def _with_records(ds: tf.data.Dataset, source: Source, batch: int) -> tf.data.Dataset:
    """Appends the fetched records to each element (..., index) of `ds` when `source` has a
    batched hook: one `source.fetch` call per `batch` consecutive elements; else `ds` as is.

    The elements come out one by one, in the same order, as (..., index, *record).
    """
    if source.fetch is None:
        return ds

    def fetch(*elements: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return (*elements, *source.fetch(elements[-1]))  # elements[-1]: indices [n]

    ds = ds.batch(batch).map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.unbatch()


def _read(source: Source, index: tf.Tensor, record: tuple[tf.Tensor, ...]):
    """(image, label) of one example: from its fetched record, or read by index."""
    return source.decode(*record) if record else source.read(index)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """perm_e: the example order of one epoch, int64 [N]."""
    return np.random.default_rng((seed, epoch)).permutation(num_examples).astype(np.int64)


def train_batches(
    source: Source,
    *,
    recipes: Sequence[Mapping[str, Any]],
    global_batch: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> Iterator[dict[str, Any]]:
    """Endless augmented training batches for this host (see the module docstring for the order).

    Args:
        source: the train split.
        recipes: one augmentation recipe per view (SimCLR: the same recipe twice; multi-crop:
            recipes of different sizes).
        global_batch: B, examples per step over all hosts.
        seed: non-negative int; fixes the order and the augmentations.
        start_step: first global step to produce (resuming at step k yields batch k first).
        process_index: this host, p.
        process_count: hosts, P; B must be divisible by P.
        prefetch: batches prepared ahead.

    Returns:
        An iterator of dicts, forever (the caller stops):
            views: list (one per recipe) of uint8 [B / P, size_v, size_v, 3]
            label: int32 [B / P], -1 for unlabeled data
            index: int64 [B / P], the example indices (for checks and kNN bookkeeping)

    Raises:
        UserError: no recipes, bad seed or step, batch larger than the dataset or not divisible.
    """
    if not recipes:
        raise UserError("train_batches needs at least one view recipe")
    parsed = [augment.parse_recipe(r) for r in recipes]
    if seed < 0 or start_step < 0:
        raise UserError(
            f"seed and start_step must be >= 0, got seed={seed}, start_step={start_step}"
        )
    spe = steps_per_epoch(source.num_examples, global_batch)
    lo, hi = _host_rows(global_batch, process_index, process_count)
    local_batch = hi - lo

    first_epoch, skip = divmod(start_step, spe)

    def host_indices(epoch: np.int64) -> np.ndarray:
        """This host's example indices of one epoch, in batch order; Python runs once an epoch."""
        perm = epoch_permutation(seed, int(epoch), source.num_examples)
        rows = perm[: spe * global_batch].reshape(spe, global_batch)[:, lo:hi]  # [spe, b]
        return rows[skip if epoch == first_epoch else 0 :].reshape(-1)

    def epoch_pairs(epoch: tf.Tensor) -> tf.data.Dataset:
        indices = tf.numpy_function(host_indices, [epoch], tf.int64, stateful=False)
        indices.set_shape([None])
        return tf.data.Dataset.from_tensor_slices((tf.fill(tf.shape(indices), epoch), indices))

    base_seed = tf.constant([seed, 0], tf.int64)

    # The view code branches with tf.cond and on Python values only, so AutoGraph's rewrite adds
    # nothing but start-up time (7-9 s of every run's first batch on 2 cores); outputs identical.
    @tf.autograph.experimental.do_not_convert
    def make_views(epoch: tf.Tensor, index: tf.Tensor, *record: tf.Tensor):
        image, label = _read(source, index, record)
        key = tf.random.experimental.stateless_fold_in(base_seed, epoch)
        key = tf.random.experimental.stateless_fold_in(key, index)
        view_seeds = tf.random.experimental.stateless_split(key, len(parsed))  # [V, 2]
        views = tuple(augment.augment_view(image, view_seeds[v], r) for v, r in enumerate(parsed))
        return views, label, index

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_pairs)
    # Every epoch holds whole host batches, so each fetch is exactly one step's rows.
    ds = _with_records(ds, source, local_batch)
    ds = ds.map(make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(prefetch).with_options(_options())

    def batches() -> Iterator[dict[str, Any]]:
        for views, label, index in ds.as_numpy_iterator():
            yield {"views": list(views), "label": label, "index": index}

    return batches()


def eval_batches(
    source: Source,
    *,
    image_size: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the split in index order, without augmentation (augment.eval_view).

    Every host yields the same number of batches, ceil(N / batch_size), so collective ops line up;
    rows past the end are padding: mask False, label -1, image zeros.

    Args:
        source: any split.
        image_size: output side.
        batch_size: global batch, divisible by process_count.
        process_index: this host; it gets rows [p * b, (p + 1) * b) of each global batch.
        process_count: hosts.

    Returns:
        An iterator of dicts: image uint8 [b, S, S, 3], label int32 [b], mask bool [b];
        b = batch_size // process_count.
    """
    if batch_size < 1:
        raise UserError(f"eval batch size must be positive, got {batch_size}")
    lo, hi = _host_rows(batch_size, process_index, process_count)
    num_batches = -(-source.num_examples // batch_size)
    positions = np.arange(num_batches, dtype=np.int64)[:, None] * batch_size + np.arange(lo, hi)
    positions = positions.reshape(-1)  # [num_batches * b], global positions of this host's rows
    mask = positions < source.num_examples

    @tf.autograph.experimental.do_not_convert  # straight-line TF ops, as make_views
    def read(valid: tf.Tensor, index: tf.Tensor, *record: tf.Tensor):
        image, label = _read(source, index, record)
        image = augment.eval_view(image, image_size) * tf.cast(valid, tf.uint8)
        return image, tf.where(valid, label, -1), valid

    # Padding rows read example 0 and are masked out.
    ds = tf.data.Dataset.from_tensor_slices((mask, np.where(mask, positions, 0)))
    ds = _with_records(ds, source, hi - lo)
    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(hi - lo).prefetch(2).with_options(_options())

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for image, label, valid in ds.as_numpy_iterator():
            yield {"image": image, "label": label, "mask": valid}

    return batches()
