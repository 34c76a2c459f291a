"""MoCo v2 (Chen, Fan, Girshick & He 2020) pretraining configs.

    python -m ssl_jax.main --config=configs/mocov2.py:demo --workdir=/tmp/mocov2_demo

Presets: imagenet (default: ResNet-50, 200 epochs, facebookresearch/moco main_moco.py with
--mlp --aug-plus --cos), cifar10 (solo-learn mocov2plus.yaml and lightly's CIFAR-10 benchmark),
demo, runlocal.
"""

import ml_collections

from ssl_jax import config_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "imagenet"
    config = config_base.shared("mocov2")
    config.batch_size = 256
    config.num_epochs = 200
    config.optimizer = "sgd"  # momentum 0.9 (main_moco.py)
    config.base_lr = 0.03  # x B/256
    config.weight_decay = 1e-4  # the code decays every parameter; we skip biases and BN
    config.warmup_epochs = 0.0  # cosine from the start (--cos)
    config.temperature = 0.2
    config.queue_size = 65536  # K; a multiple of the keys enqueued per step
    config.symmetric = False  # the paper's one direction (solo-learn symmetrises)
    # Key encoder BN: global-batch BN (False) or MoCo's per-device shuffling BN (True).
    config.shuffle_bn = False
    # moco/builder.py --mlp: Linear 2048 (bias) -> ReLU -> Linear 128, no BatchNorm.
    config.projector = ml_collections.ConfigDict(
        dict(hidden_dim=0, out_dim=128, num_layers=2, hidden_bn=False)  # hidden 0 = backbone dim
    )
    # Key encoder momentum 0.999, constant (tau_final = tau_base); copied at start.
    config.ema = ml_collections.ConfigDict(dict(tau_base=0.999, tau_final=0.999, copy_init=True))
    # --aug-plus: crop 0.2-1, CJ (0.4, 0.4, 0.4, 0.1) p 0.8, grey 0.2, blur p 0.5, flip.
    config_base.mocov2_views(config, "mocov2")

    if preset == "cifar10":
        # solo-learn mocov2plus.yaml: ResNet-18, SGD lr 0.3 x B/256, wd 1e-4, t 0.2, EMA
        # 0.99 -> 0.999 (cosine), head 2048 -> 256; its queue is 32768 per view (symmetrised).
        # lightly: queue 4096, t 0.1, EMA 0.99. We take lightly's queue for 50,000 images.
        config.model.name = "resnet18"
        config.num_epochs = 1000
        config.base_lr = 0.3
        config.queue_size = 4096
        config.projector.hidden_dim = 2048
        config.projector.out_dim = 256
        config.ema.tau_base = 0.99
        config.ema.tau_final = 0.999
    elif preset == "demo":
        config.batch_size = 128
        config.total_steps = 400
        config.base_lr = 0.3
        config.warmup_epochs = 0.5
        config.queue_size = 4096
        config.ema.tau_base = config.ema.tau_final = 0.99
        config.projector.hidden_dim = 512
    elif preset == "runlocal":
        config.queue_size = 64
        config.projector.hidden_dim = 32
        config.projector.out_dim = 16
    return config_base.finish_preset(config, preset)
