"""VICReg (Bardes, Ponce & LeCun 2022) pretraining configs.

    python -m ssl_jax.main --config=configs/vicreg.py:demo --workdir=/tmp/vicreg_demo

Presets: imagenet (default: ResNet-50, 1000 epochs, B 2048, facebookresearch/vicreg
main_vicreg.py), cifar10 (solo-learn vicreg.yaml), demo, runlocal.
"""

import ml_collections

from ssl_jax import config_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "imagenet"
    config = config_base.shared("vicreg")
    config.batch_size = 2048
    config.num_epochs = 1000
    config.base_lr = 0.2  # LARS, x B/256 (main_vicreg.py; the README's 100 epochs: B 512, 0.3)
    config.weight_decay = 1e-6
    config.warmup_epochs = 10.0
    config.sim_coeff, config.std_coeff, config.cov_coeff = 25.0, 25.0, 1.0  # lambda, mu, nu
    # Expander 8192-8192-8192: Linear -> BN -> ReLU twice, then Linear without bias.
    config.projector = ml_collections.ConfigDict(
        dict(hidden_dim=8192, out_dim=8192, num_layers=3, last_bias=False)
    )
    config_base.byol_views(config)  # as Barlow Twins (augmentations.py)

    if preset == "cifar10":
        # solo-learn vicreg.yaml: ResNet-18, B 256, LARS lr 0.3 x B/256, wd 1e-4, expander
        # 2048 x 3, crop 0.2-1, solarisation 0.1 on both views, no blur. (solo's variance term
        # is twice the official one; ours is the official.)
        config.model.name = "resnet18"
        config.batch_size = 256
        config.base_lr = 0.3
        config.weight_decay = 1e-4
        config.projector.hidden_dim = config.projector.out_dim = 2048
        for recipe in config.augment.values():
            recipe.crop_area = (0.2, 1.0)
            recipe.solarize_prob = 0.1
    elif preset == "demo":
        config.batch_size = 128
        config.total_steps = 400
        config.base_lr = 0.3
        config.weight_decay = 1e-4
        config.warmup_epochs = 0.5
        config.projector.hidden_dim = config.projector.out_dim = 512
    elif preset == "runlocal":
        config.projector.hidden_dim = config.projector.out_dim = 32
    return config_base.finish_preset(config, preset)
