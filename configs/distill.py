"""Distillation of a fine-tuned classifier into a student (SimCLR v2, section 2, step 3).

    python -m ssl_jax.main --config=configs/distill.py:demo \
        --config.teacher=/tmp/ssl_demo_ft10 --workdir=/tmp/ssl_demo_distill

`teacher` is a fine-tuning run (configs/finetune.py) or its export/: its encoder and linear layer
label every train image (labels unused) with soft targets at `distill_temperature`, and the
student (config.model, the same or a smaller ResNet, from scratch by default) learns them
through the same random crops and flips. results.json has the student's `distill_top1` beside
the teacher's `teacher_top1`. `distill_label_weight` w > 0 adds the true labels of the teacher's
labelled subset: loss = (1 - w) * distillation + w * cross-entropy on the labelled examples.

Presets: imagenet (default; the fine-tuning recipe's optimiser, 100 epochs: our choice, the
recipe file gives no distillation schedule), cifar10, demo (the whole demo train split, a few
minutes on 2 CPU cores), runlocal (seconds, for tests).
"""

from ssl_jax import config_base


def get_config(arg: str | None = None):
    config = config_base.supervised(arg, frozen_encoder=False)
    config.method = "distill"
    config.teacher = ""  # a fine-tuning run's workdir or export/ (required)
    config.distill_temperature = 1.0  # SimCLR v2 section 2: tau = 1 by default
    # SimCLR v2 section 2 adds the labelled loss "with a weighted combination" when labels are
    # many; 0 is its eq. 3, distillation alone.
    config.distill_label_weight = 0.0
    config.from_scratch = True  # or --config.pretrained=PATH --config.from_scratch=False
    config.label_fraction = 1.0  # every train image, through the teacher's labels
    config.num_epochs = 100
    if arg == "demo":
        config.num_epochs = 10
    return config
