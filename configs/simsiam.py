"""SimSiam (Chen & He 2021) pretraining configs.

    python -m ssl_jax.main --config=configs/simsiam.py:demo --workdir=/tmp/simsiam_demo

Presets: imagenet (default: ResNet-50, 100 epochs, B 512, facebookresearch/simsiam
main_simsiam.py and README with --fix-pred-lr), cifar10 (solo-learn simsiam.yaml), demo, runlocal.
"""

import ml_collections

from ssl_jax import config_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "imagenet"
    config = config_base.shared("simsiam")
    config.batch_size = 512
    config.num_epochs = 100
    config.optimizer = "sgd"  # momentum 0.9
    config.base_lr = 0.05  # x B/256
    config.weight_decay = 1e-4  # the code decays every parameter; we skip biases and BN
    config.warmup_epochs = 0.0  # cosine, no warm-up
    # --fix-pred-lr (section 4.4): the predictor keeps the initial learning rate.
    config.param_groups.predictor = ml_collections.ConfigDict(dict(schedule="constant"))
    # simsiam/builder.py: projector 3 x 2048 with BN, the last BN(affine=False);
    # predictor bottleneck 2048 -> 512 -> 2048.
    config.projector = ml_collections.ConfigDict(
        dict(hidden_dim=2048, out_dim=2048, num_layers=3, last_bn=True, last_bn_scale=False)
    )
    config.predictor = ml_collections.ConfigDict(dict(hidden_dim=512, out_dim=2048, num_layers=2))
    # MoCo v2's augmentation (main_simsiam.py).
    config_base.mocov2_views(config, "simsiam")

    if preset == "cifar10":
        # solo-learn simsiam.yaml: ResNet-18, B 256, SGD lr 0.5 x B/256, wd 1e-5, projector
        # 2048, predictor 512; crop 0.08-1. (lightly: lr 0.06 without batch scaling.)
        config.model.name = "resnet18"
        config.batch_size = 256
        config.num_epochs = 1000
        config.base_lr = 0.5
        config.weight_decay = 1e-5
        config.augment.simsiam.crop_area = (0.08, 1.0)
    elif preset == "demo":
        config.batch_size = 128
        config.total_steps = 400
        config.base_lr = 0.5
        config.weight_decay = 1e-5
        config.projector.hidden_dim = config.projector.out_dim = 512
        config.predictor.hidden_dim = 128
        config.predictor.out_dim = 512
    elif preset == "runlocal":
        config.projector.hidden_dim = config.projector.out_dim = 32
        config.predictor.hidden_dim = 16
        config.predictor.out_dim = 32
    return config_base.finish_preset(config, preset)
