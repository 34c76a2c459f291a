"""SwAV (Caron et al. 2020) pretraining configs.

    python -m ssl_jax.main --config=configs/swav.py:demo --workdir=/tmp/swav_demo

Presets: imagenet (default: ResNet-50, batch 4096, 2 x 224 + 6 x 96 crops,
facebookresearch/swav scripts/swav_800ep_pretrain.sh at 100 epochs, no queue), cifar10
(solo-learn scripts/pretrain/cifar/swav.yaml, its queue included), demo (the demo set on 2 CPU
cores), runlocal. The paper's batch-256 recipe (scripts/swav_200ep_bs256_pretrain.sh):
--config.batch_size=256 --config.base_lr=0.6 --config.warmup_epochs=0
--config.queue_length=3840 --config.epoch_queue_starts=15.
"""

import ml_collections

from ssl_jax import config_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "imagenet"
    config = config_base.shared("swav")
    config.num_epochs = 100
    # LARC (trust 0.001) around SGD with momentum 0.9, wd 1e-6; an ABSOLUTE lr of 4.8 at batch
    # 4096 (the scripts do not scale it), 10 warm-up epochs, cosine. Here the warm-up starts at
    # 0 (SwAV's at 0.3), the cosine ends at 0 (SwAV's at 0.0048), and biases and BatchNorm
    # parameters are not decayed (SwAV decays every parameter).
    config.optimizer = "lars"
    config.lr_scaling = "none"
    config.base_lr = 4.8
    config.weight_decay = 1e-6
    config.warmup_epochs = 10.0
    config.temperature = 0.1
    config.epsilon = 0.05  # Sinkhorn's entropic regularisation
    config.sinkhorn_iterations = 3
    config.num_prototypes = 3000
    # The queue of past embeddings for small batches (methods/swav.py): off at batch 4096 (the
    # 4096 samples suffice for Sinkhorn); scripts/swav_{200,400}ep_bs256_pretrain.sh use 3,840
    # rows (15 batches of 256) from epoch 15 (also main_swav.py's default start).
    config.queue_length = 0
    config.epoch_queue_starts = 15.0
    # src/resnet50.py: Linear 2048 -> BN -> ReLU -> Linear 128, then l2-normalised.
    config.projector = ml_collections.ConfigDict(
        dict(hidden_dim=2048, out_dim=128, num_layers=2, last_bn=False)
    )
    # Prototypes frozen for the first 313 iterations, about an epoch at batch 4096.
    config.param_groups.prototypes = ml_collections.ConfigDict(dict(frozen_epochs=1.0))
    # src/multicropdataset.py: colour jitter 0.8 s (s 1, multiplicative brightness as
    # torchvision) p 0.8, grey 0.2, blur p 0.5, flip; global crops of 14-100% of the image.
    config.augment.global_crop = config_base.view_recipe(
        config.get_ref("image_size"), crop_area=(0.14, 1.0), brightness_mode="multiplicative"
    )
    config.views = ("global_crop", "global_crop")
    num_local = 6  # 6 x 96 px of 5-14% (swav_800ep_pretrain.sh)

    if preset == "cifar10":
        # solo-learn swav.yaml: ResNet-18, B 256, LARS lr 0.6 x B/256, projector 2048 -> 128,
        # 3,000 prototypes frozen for 2 epochs, 2 crops of 32 px, a queue of 3,840 from epoch 50.
        config.model.name = "resnet18"
        config.batch_size = 256
        config.num_epochs = 1000
        config.lr_scaling = "linear"
        config.base_lr = 0.6
        config.param_groups.prototypes.frozen_epochs = 2.0
        config.queue_length = 3840
        config.epoch_queue_starts = 50.0
        num_local = 0
    elif preset in ("demo", "runlocal"):
        config.lr_scaling = "linear"
        config.base_lr = 0.6
        config.projector.hidden_dim = 512
        config.num_prototypes = 300
        config.augment.global_crop.color_jitter_strength = 0.5
        num_local = 0
    if preset == "demo":
        config.batch_size = 128
        config.total_steps = 400
        config.warmup_epochs = 0.5
        config.param_groups.prototypes.frozen_epochs = 0.5
        # 400 steps are 5 epochs, and LARS moves each weight by about lr x 0.001 of its norm a
        # step, so the short run takes 4x the solo-learn lr (peak 1.2 at B 128). With the 100
        # prototypes below: kNN 0.307 at base 1.2, 0.314 at 2.4 (one run each); the preset
        # before, 0.6 and 300 prototypes, 0.291. The two changes were not measured apart.
        config.base_lr = 2.4
        # Sinkhorn spreads each batch evenly over the prototypes: 128 samples over 300 leave
        # under one sample per prototype. The paper's remedy for small batches is a queue of
        # past batches (from epoch 15 of 200 at B 256; not tried in a 5-epoch demo); fewer
        # prototypes (10 per demo class) give each one over one sample of every batch.
        config.num_prototypes = 100
    elif preset == "runlocal":
        config.projector.hidden_dim = 32
        config.projector.out_dim = 16
        config.num_prototypes = 30
        config.param_groups.prototypes.frozen_epochs = 0.0
    config_base.local_views(config, "global_crop", crop_area=(0.05, 0.14))
    config.num_local_views = num_local
    return config_base.finish_preset(config, preset)
