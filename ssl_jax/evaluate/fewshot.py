"""Few-shot linear evaluation: n labelled train examples per class, several seeded draws.

For each n, each draw picks n examples of every class from the train split (seeded, see
ssl_jax.data.subsets), fits the L2-regularised logistic regression of evaluate/logistic.py on
their frozen features, and scores the test split. The result is the mean and the standard
deviation over the draws, as few-shot tables report them.

With one example per class nothing can be held out, so the L2 strength is a fixed setting, not a
search. The features are standardised with the mean and std of the whole train split: those need
no labels, and a handful of examples cannot estimate them.
"""

import numpy as np

from ssl_jax.data import subsets
from ssl_jax.evaluate.logistic import fit_logistic_regression, top_k_accuracy


def fewshot_linear(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    num_classes: int,
    *,
    shots=(1, 5, 10),
    draws: int = 5,
    l2: float = 1e-2,
    seed: int = 0,
) -> dict:
    """Mean and std of test top-1 over `draws` seeded draws of n labels per class, for each n.

    Returns:
      {n: {"top1_mean", "top1_std", "top1_per_draw": [...], "train_ids": [[...] per draw]}};
      std is the population std over the draws (0 for one draw).
    """
    train_feats, train_labels = np.asarray(train_feats, np.float32), np.asarray(train_labels)
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    mean, std = train_feats.mean(axis=0), train_feats.std(axis=0)
    out = {}
    for n in shots:
        size = subsets.subset_size(len(train_labels), per_class=n, num_classes=num_classes)
        accuracies, chosen = [], []
        for draw in range(draws):
            # Seeds of different draws and of different n are distinct streams.
            ids = subsets.class_balanced_subset(train_labels, size=size, seed=seed * 1000 + draw)
            probe = fit_logistic_regression(train_feats[ids], train_labels[ids], num_classes,
                                            l2=l2, mean=mean, std=std)  # fmt: skip
            accuracies.append(top_k_accuracy(probe, test_feats, test_labels, 1))
            chosen.append(ids.tolist())
        out[int(n)] = {
            "top1_mean": float(np.mean(accuracies)),
            "top1_std": float(np.std(accuracies)),
            "top1_per_draw": [float(a) for a in accuracies],
            "train_ids": chosen,
        }
    return out
