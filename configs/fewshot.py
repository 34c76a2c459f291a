"""Few-shot linear evaluation of a frozen, pretrained encoder.

    python -m ssl_jax.main --config=configs/fewshot.py:demo \
        --config.pretrained=/tmp/ssl_demo --workdir=/tmp/ssl_demo_fewshot

For each n in `fewshot.shots` (1, 5, 10), `fewshot.draws` (5) seeded draws of n labelled train
examples per class; on each, L2-regularised logistic regression (L-BFGS, `fewshot.l2`, fixed:
one example per class leaves nothing to hold out) on the frozen features, standardised with the
whole train split's statistics (no labels needed); reports the test top-1's mean and standard
deviation over the draws. The ids of every draw go to workdir/fewshot_train_ids.json.

Presets as configs/linear_eval.py: imagenet (default), cifar10, demo, runlocal.
"""

from ssl_jax import config_base


def get_config(arg: str | None = None):
    return config_base.evaluation(("fewshot",), arg)
