"""Fine-tuning a pretrained encoder on a fraction of the labels (SimCLR v2, section 2).

    python -m ssl_jax.main --config=configs/finetune.py:demo \
        --config.pretrained=/tmp/ssl_demo --workdir=/tmp/ssl_demo_ft10
    python -m ssl_jax.main --config=configs/finetune.py:demo --config.from_scratch=True \
        --workdir=/tmp/ssl_demo_supervised10             # the same labels, no pretraining

The whole encoder and a new linear layer are trained on a class-balanced labelled subset of the
train split: `label_fraction` of it (0.01, 0.1, 1.0), drawn from (seed, fraction) and written to
WORKDIR/train_subset.json (a resumed run reads it back). To train on SimCLR's own ImageNet 1% /
10% images instead, pass google-research/simclr's imagenet_subsets/1percent.txt (or
10percent.txt), one file name per line, as --config.label_subset_file=PATH: the images are
matched by file name (imagenet2012 from TFDS, or imagefolder:PATH), and label_fraction must
state their share of the train split (0.01 or 0.1, within 5%; the error says the value). The
file's path and sha256 are saved with the ids, and a resume with another file is refused. The
encoder's architecture must match
the export's (the error says which --config.model values to pass). The result is the test
split's top-1 / top-5 (`finetune_top1`), and the encoder plus its classifier are exported to
WORKDIR/export (a distillation teacher: configs/distill.py).

SimCLR v2 fine-tunes from the projection head's first layer (section 2; tf2/model.py
`ft_proj_selector=1`): --config.finetune_from=projector_layer_1 puts the linear layer on that
layer's output (Linear -> BN -> ReLU, loaded from the export's projector_layer_1/, which every
pretraining run with an MLP projector writes) and fine-tunes it with the encoder; the default,
finetune_from=encoder, puts it on the encoder's features. An export without that layer (a method
without an MLP projector, or exported before the layer was) is a one-line error: re-export it by
running its pretraining command again on its workdir, or use finetune_from=encoder.
results.json names `finetune_from`; the export records it (load_classifier rebuilds the layer).

Presets: imagenet (default; SimCLR v2's 1% recipe: LARS, lr 0.005 x sqrt(B), B 1024, 60
epochs; use --config.label_fraction=0.1 --config.num_epochs=30 for 10%; add
--config.finetune_from=projector_layer_1 for the paper's head), cifar10, demo (10% of the demo
set, about a minute on 2 CPU cores), runlocal (seconds, for tests).
"""

from ssl_jax import config_base


def get_config(arg: str | None = None):
    return config_base.supervised(arg, frozen_encoder=False)
