"""Frozen-feature evaluation of an encoder: extract features, then kNN and linear top-1.

Used by the trainer every `eval_every_steps`, at the end of a run, and for the random-init
baseline. Features of the train split (no augmentation) form the kNN bank and the linear
probe's training set; the test split is scored. `eval_max_examples` (0: all) evaluates on at most
that many evenly spaced examples of each split, for smoke runs and cheap evaluation during long
runs; results.json records the sizes used.
"""

import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from ssl_jax import data, parallel
from ssl_jax.evaluate.knn import knn_accuracy
from ssl_jax.evaluate.linear import linear_probe_top1


def extract_features(encode, variables, source, *, image_size: int, batch_size: int, mesh):
    """Features [N, D] (float32) and labels [N] of a whole split, on every host."""
    feats, labels = [], []
    batches = data.eval_batches(
        source,
        image_size=image_size,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for batch in batches:
        images = parallel.to_global(batch["image"], mesh)
        f = multihost_utils.process_allgather(encode(variables, images), tiled=True)  # [b, D]
        mask = multihost_utils.process_allgather(
            parallel.to_global(batch["mask"], mesh), tiled=True
        )
        lab = multihost_utils.process_allgather(
            parallel.to_global(batch["label"], mesh), tiled=True
        )
        feats.append(np.asarray(f)[mask])
        labels.append(np.asarray(lab)[mask])
    return np.concatenate(feats), np.concatenate(labels)


def evaluate_encoder(encode, variables, *, train_source, test_source, config, mesh) -> dict:
    """kNN top-1 / top-5 and linear top-1 on the test split, or a reason why the data cannot say."""
    if train_source.num_classes == 0:
        return {"skipped": "the dataset has no labels (a flat image folder)"}
    if test_source is None:
        return {"skipped": "the dataset has no test split (add PATH/test/<class>/ to evaluate)"}
    start = time.time()
    limit = config.get("eval_max_examples", 0)  # newer than some configs: absent is all
    train_source, test_source = spaced(train_source, limit), spaced(test_source, limit)
    kwargs = dict(image_size=config.image_size, batch_size=eval_batch(config, mesh), mesh=mesh)
    train_feats, train_labels = extract_features(encode, variables, train_source, **kwargs)
    test_feats, test_labels = extract_features(encode, variables, test_source, **kwargs)
    num_classes = train_source.num_classes
    knn = knn_accuracy(
        train_feats,
        train_labels,
        test_feats,
        test_labels,
        k=config.knn.k,
        temperature=config.knn.temperature,
        num_classes=num_classes,
    )
    results = {
        "knn_top1": knn["top1"],
        "knn_top5": knn["top5"],
        "linear_top1": float(
            linear_probe_top1(
                train_feats, train_labels, test_feats, test_labels, num_classes, seed=config.seed
            )
        ),
        "eval_seconds": round(time.time() - start, 1),
    }
    if limit:
        results.update(eval_train_examples=len(train_labels), eval_test_examples=len(test_labels))
    return results


def spaced(source: data.Source, limit: int) -> data.Source:
    """At most `limit` examples of the split, every ceil(N / limit)-th (all of them if limit is
    0): evenly spaced, so a split stored class by class keeps every class."""
    stride = -(-source.num_examples // limit) if limit else 1
    if stride <= 1:
        return source
    return source.take(np.arange(0, source.num_examples, stride), f"{source.name}[::{stride}]")


def eval_batch(config, mesh) -> int:
    """config.eval_batch_size (0: the training batch), rounded down to a multiple of the devices."""
    devices = mesh.devices.size
    requested = config.get("eval_batch_size", 0) or config.batch_size
    return max(devices, requested // devices * devices)
