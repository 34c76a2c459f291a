"""Barlow Twins (Zbontar et al. 2021) pretraining configs.

    python -m ssl_jax.main --config=configs/barlow_twins.py:demo --workdir=/tmp/bt_demo

Presets: imagenet (default: ResNet-50, 1000 epochs, B 2048, facebookresearch/barlowtwins
main.py), cifar10 (solo-learn barlow.yaml), demo, runlocal.

lambd weighs D(D - 1) off-diagonal terms against D diagonal ones, so its best value depends on
the projector width D; the paper's 0.0051 belongs to D = 8192, and the paper finds accuracy flat
over a wide range of lambd. Keeping lambd * D fixed when D shrinks (0.082 at D = 512) learned
less in the demo than the paper's 0.0051 did (kNN 0.277 vs 0.312 at D = 512, 400 steps), so the
demo keeps 0.0051.
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
        config.projector.hidden_dim = config.projector.out_dim = 512  # lambd stays 0.0051
    elif preset == "runlocal":
        config.projector.hidden_dim = config.projector.out_dim = 32
    return config_base.finish_preset(config, preset)
