"""Evaluation of frozen representations: kNN, linear probes and representation health.

Everything here is a function of feature arrays; extracting the features from a dataset with an
encoder is a separate step.
"""

from ssl_jax.evaluate.health import effective_rank, embedding_std
from ssl_jax.evaluate.knn import knn_accuracy, knn_classify, knn_ranked_classes, knn_top1
from ssl_jax.evaluate.linear import (
    LinearProbe,
    fit_linear_probe,
    linear_probe_predict,
    linear_probe_top1,
)

__all__ = [
    "LinearProbe",
    "effective_rank",
    "embedding_std",
    "fit_linear_probe",
    "knn_accuracy",
    "knn_classify",
    "knn_ranked_classes",
    "knn_top1",
    "linear_probe_predict",
    "linear_probe_top1",
]
