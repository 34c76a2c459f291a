"""Fine-tuning a pretrained encoder on a fraction of the labels (SimCLR v2, section 2).

    python -m ssl_jax.main --config=configs/finetune.py:demo \
        --config.pretrained=/tmp/ssl_demo --workdir=/tmp/ssl_demo_ft10
    python -m ssl_jax.main --config=configs/finetune.py:demo --config.from_scratch=True \
        --workdir=/tmp/ssl_demo_supervised10             # the same labels, no pretraining

The whole encoder and a new linear layer are trained on a class-balanced labelled subset of the
train split: `label_fraction` of it (0.01, 0.1, 1.0), drawn from (seed, fraction) and written to
WORKDIR/train_subset.json (a resumed run reads it back). The encoder's architecture must match
the export's (the error says which --config.model values to pass). The result is the test
split's top-1 / top-5 (`finetune_top1`), and the encoder plus its classifier are exported to
WORKDIR/export (a distillation teacher: configs/distill.py).

Presets: imagenet (default; SimCLR v2's 1% recipe: LARS, lr 0.005 x sqrt(B), B 1024, 60
epochs; use --config.label_fraction=0.1 --config.num_epochs=30 for 10%), cifar10, demo (10% of
the demo set, about a minute on 2 CPU cores), runlocal (seconds, for tests).
Not built yet: SimCLR v2's fine-tuning from the projection head's first layer, and the
SimCLR 1% / 10% ImageNet file lists (the subsets are drawn class-balanced instead).
"""

from ssl_jax import config_base


def get_config(arg: str | None = None):
    return config_base.supervised(arg, frozen_encoder=False)
