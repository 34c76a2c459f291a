"""Barlow Twins (Zbontar et al. 2021) pretraining configs.

    python -m ssl_jax.main --config=configs/barlow_twins.py:demo --workdir=/tmp/bt_demo

Presets: imagenet (default: ResNet-50, 1000 epochs, B 2048, facebookresearch/barlowtwins
main.py), cifar10 (solo-learn barlow.yaml), demo, runlocal.

lambd and the projector width go together: the loss sums D^2 off-diagonal terms, so the paper's
0.0051 belongs to D = 8192. When you shrink D, scale lambd up roughly as 1/D (a rule of thumb,
not the official code's; the paper finds the loss flat over a wide range of lambd).
"""

import ml_collections

from ssl_jax import config_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "imagenet"
    config = config_base.shared("barlow_twins")
    config.batch_size = 2048
    config.num_epochs = 1000
    config.base_lr = 0.2  # LARS, weights, x B/256. The code gives biases and BN 0.0048 x B/256;
    # here they share the weights' rate (LARS already skips their trust ratio and decay).
    config.weight_decay = 1e-6
    config.warmup_epochs = 10.0
    config.lambd = 0.0051  # main.py
    # main.py --projector 8192-8192-8192: Linear (no bias) -> BN -> ReLU twice, then Linear.
    config.projector = ml_collections.ConfigDict(
        dict(hidden_dim=8192, out_dim=8192, num_layers=3, last_bias=False)
    )
    config_base.byol_views(config)  # blur p 1.0 / 0.1, solarisation 0.0 / 0.2 (main.py)

    if preset == "cifar10":
        # solo-learn barlow.yaml: ResNet-18, B 256, LARS lr 0.3 x B/256, wd 1e-4, projector
        # 2048-2048-2048, lambd 0.0051 (solo also scales the loss by 0.1; not done here).
        config.model.name = "resnet18"
        config.batch_size = 256
        config.base_lr = 0.3
        config.weight_decay = 1e-4
        config.projector.hidden_dim = config.projector.out_dim = 2048
    elif preset == "demo":
        config.batch_size = 128
        config.total_steps = 400
        config.base_lr = 0.3
        config.weight_decay = 1e-4
        config.warmup_epochs = 0.5
        config.projector.hidden_dim = config.projector.out_dim = 512
        config.lambd = 0.0051 * 8192 / 512  # lambd * D kept at the paper's value
    elif preset == "runlocal":
        config.projector.hidden_dim = config.projector.out_dim = 32
    return config_base.finish_preset(config, preset)
