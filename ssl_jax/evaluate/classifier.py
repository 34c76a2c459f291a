"""A trained classifier's top-1 / top-5 on the test split (fine-tuning, linear, distillation)."""

import time

import numpy as np

from ssl_jax.evaluate import features as features_lib


def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """bool [N]: whether labels[i] is among the k largest logits[i] ([N, C])."""
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]  # [N, k], unordered
    return np.any(top == labels[:, None], axis=-1)


def evaluate_classifier(predict, variables, *, test_source, config, mesh, name: str) -> dict:
    """{name}_top1 and {name}_top5 of `predict(variables, images) -> logits` on the test split.

    The images are the test split's un-augmented center views at config.image_size, sharded over
    every device like the feature extraction (`eval_max_examples` applies as there).
    """
    if test_source is None:
        return {"skipped": "the dataset has no test split (add PATH/test/<class>/ to evaluate)"}
    start = time.time()
    source = features_lib.spaced(test_source, config.get("eval_max_examples", 0))
    logits, labels = features_lib.extract_features(
        predict,
        variables,
        source,
        image_size=config.image_size,
        batch_size=features_lib.eval_batch(config, mesh),
        mesh=mesh,
    )
    return {
        f"{name}_top1": float(np.mean(top_k_correct(logits, labels, 1))),
        f"{name}_top5": float(np.mean(top_k_correct(logits, labels, 5))),
        "test_examples": int(len(labels)),
        "eval_seconds": round(time.time() - start, 1),
    }
