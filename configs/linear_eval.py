"""Linear evaluation of a frozen, pretrained encoder (and kNN on the same features).

    python -m ssl_jax.main --config=configs/linear_eval.py:demo \
        --config.pretrained=/tmp/ssl_demo --workdir=/tmp/ssl_demo_linear

`pretrained` is a pretraining workdir or its export/ folder; the dataset may differ from the one
the encoder was trained on (transfer: --config.dataset=imagefolder:PATH). Protocols:
  knn              weighted kNN (Wu et al. 2018), k 200, temperature 0.07 (0.1 for CIFAR,
                   lemniscate cifar.py); top-1 and top-5.
  frozen_features  L2-regularised logistic regression on the un-augmented train features, solved
                   with L-BFGS to convergence, L2 chosen on a held-out part of the train split
                   (never the test split), then refitted on the whole train split (Kornblith et
                   al. 2019, as in SimCLR's and BYOL's transfer tables); top-1 and top-5.
  augmented        the papers' protocol: a linear layer trained on the frozen encoder (its
                   BatchNorm in inference mode) through random resized crops and flips; SimCLR's
                   recipe: SGD with Nesterov momentum 0.9, lr 0.1 x B/256, 90 epochs, cosine, no
                   weight decay. A run of the trainer in WORKDIR/augmented/ (resumable); its
                   settings are the `augmented` block (--config.augmented.num_epochs=...).
--config.random_init=True evaluates the same architecture freshly initialised: the baseline.

Presets: imagenet (default; imagenet2012, 10,000 held-out train images as BYOL), cifar10, demo
(the bundled demo set, about a minute on 2 CPU cores), runlocal (seconds, for tests).
"""

from ssl_jax import config_base


def get_config(arg: str | None = None):
    return config_base.evaluation(("knn", "frozen_features", "augmented"), arg)
