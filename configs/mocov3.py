"""MoCo v3 (Chen, Xie & He 2021) pretraining configs, ResNet recipe.

    python -m ssl_jax.main --config=configs/mocov3.py:demo --workdir=/tmp/mocov3_demo

Presets: imagenet (default: ResNet-50, 100 epochs, facebookresearch/moco-v3 CONFIG.md),
cifar10 (solo-learn scripts/pretrain/cifar/mocov3.yaml), demo, runlocal.
"""

import ml_collections

from ssl_jax import config_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "imagenet"
    config = config_base.shared("mocov3")
    config.base_lr = 0.6  # LARS, x B/256, 100 epochs (0.3 for 300 / 1000 epochs; CONFIG.md)
    config.weight_decay = 1e-6
    config.warmup_epochs = 10.0
    config.temperature = 1.0  # main_moco.py default, which the ResNet-50 commands keep
    # moco/builder.py, ResNet: projector 2 layers 4096 -> 256 with BN(affine=False) last;
    # predictor 2 layers 4096 -> 256, no last BN. All Linear layers without bias.
    config.projector = ml_collections.ConfigDict(
        dict(hidden_dim=4096, out_dim=256, num_layers=2, last_bn=True, last_bn_scale=False)
    )
    config.predictor = ml_collections.ConfigDict(
        dict(hidden_dim=4096, out_dim=256, num_layers=2, last_bias=False)
    )
    # Momentum encoder: m 0.99 -> 1 on a cosine (CONFIG.md), copied from the online one.
    config.ema = ml_collections.ConfigDict(dict(tau_base=0.99, tau_final=1.0, copy_init=True))
    # moco/loader.py + main_moco.py: BYOL's asymmetric pair; crop 0.2-1 in the ResNet commands.
    config_base.byol_views(config, crop_area=(0.2, 1.0))

    if preset == "cifar10":
        # solo-learn mocov3.yaml: ResNet-18, B 256, LARS lr 0.3 x B/256, wd 1e-6, t 0.2 (the
        # paper's ResNet value is 1.0), projector 4096 -> 256, predictor 4096, EMA 0.99 -> 1.
        config.model.name = "resnet18"
        config.batch_size = 256
        config.num_epochs = 1000
        config.base_lr = 0.3
        config.temperature = 0.2
        for recipe in config.augment.values():
            recipe.crop_area = (0.08, 1.0)
    elif preset == "demo":
        config.batch_size = 128
        config.total_steps = 300
        config.base_lr = 1.0
        config.warmup_epochs = 0.5
        config.temperature = 0.2
        config.projector.hidden_dim = config.predictor.hidden_dim = 512
        config.projector.out_dim = config.predictor.out_dim = 128
    elif preset == "runlocal":
        config.temperature = 0.2
        config.projector.hidden_dim = config.predictor.hidden_dim = 32
        config.projector.out_dim = config.predictor.out_dim = 16
    return config_base.finish_preset(config, preset)
