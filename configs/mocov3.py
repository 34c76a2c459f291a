"""MoCo v3 (Chen, Xie & He 2021) pretraining configs, ResNet and ViT recipes.

    python -m ssl_jax.main --config=configs/mocov3.py:demo --workdir=/tmp/mocov3_demo
    python -m ssl_jax.main --config=configs/mocov3.py:demo_vit --workdir=/tmp/mocov3_demo_vit

Presets: imagenet (default: ResNet-50, 100 epochs, facebookresearch/moco-v3 CONFIG.md),
cifar10 (solo-learn scripts/pretrain/cifar/mocov3.yaml), demo, runlocal; and the ViT recipe:
imagenet_vit (ViT-S/16, 300 epochs, CONFIG.md's ViT-Small), demo_vit and runlocal_vit (that
recipe on a ViT-Tiny with 4 px patches on the demo set).
"""

import ml_collections

from ssl_jax import config_base

VIT_PRESETS = ("imagenet_vit", "demo_vit", "runlocal_vit")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, variant = config_base.parse_preset(arg, VIT_PRESETS)
    config = config_base.shared("mocov3")
    config.base_lr = 0.6  # LARS, x B/256, 100 epochs (0.3 for 300 / 1000 epochs; CONFIG.md)
    config.weight_decay = 1e-6
    config.warmup_epochs = 10.0
    config.temperature = 1.0  # main_moco.py default, which the ResNet-50 commands keep
    # moco/builder.py, ResNet: projector 2 layers 4096 -> 256 with BN(affine=False) last;
    # predictor 2 layers 4096 -> 256, no last BN (the ViT recipe's ends in BN(affine=False)).
    # All Linear layers without bias.
    config.projector = ml_collections.ConfigDict(
        dict(hidden_dim=4096, out_dim=256, num_layers=2, last_bn=True, last_bn_scale=False)
    )
    config.predictor = ml_collections.ConfigDict(
        dict(hidden_dim=4096, out_dim=256, num_layers=2, last_bias=False)
    )
    config.predictor.last_bn = config.predictor.last_bn_scale = False
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
    if variant == "vit":
        vit_recipe(config, preset)
    return config_base.finish_preset(config, preset, variant)


def vit_recipe(config: ml_collections.ConfigDict, preset: str) -> None:
    """MoCo v3's ViT recipe over the ResNet values above (CONFIG.md, "ViT-Small" commands:
    --optimizer=adamw --lr=1.5e-4 --weight-decay=.1 --epochs=300 --warmup-epochs=40
    --stop-grad-conv1 --moco-m-cos --moco-t=.2; main_moco.py defaults for the rest)."""
    config.optimizer = "adamw"  # torch.optim.AdamW defaults: betas (0.9, 0.999), eps 1e-8
    # main_moco.py decays every parameter (AdamW over model.parameters()); ours keeps biases,
    # norms and the class token out of weight decay, as for every method (ssl_jax/optim.py).
    config.weight_decay = 0.1
    config.temperature = 0.2
    # vits.py: fixed 2-D sin-cos position embeddings, the patch projection frozen at its random
    # (xavier_uniform) init, the class token's features; vit_small has 12 heads (DeiT-S: 6).
    config.model.posemb = "sincos2d"
    config.model.pool = "cls"
    config.model.frozen_patch_embedding = True
    # moco/builder.py MoCo_ViT: a 3-layer projector and a 2-layer predictor, both ending in
    # BN(affine=False); hidden 4096, out 256 (--moco-mlp-dim, --moco-dim), no biases.
    config.projector.num_layers = 3
    config.predictor.last_bn = True
    config.predictor.last_bn_scale = False
    # main_moco.py --crop-min default 0.08 (only the ResNet-50 commands pass .2).
    for recipe in config.augment.values():
        recipe.crop_area = (0.08, 1.0)
    if preset == "imagenet":
        config.model.name = "vit_s16"
        config.model.num_heads = 12
        config.base_lr = 1.5e-4  # x B/256 (main_moco.py), B 4096: the ViT table's batch
        config.num_epochs = 300
        config.warmup_epochs = 40.0
    elif preset == "demo":
        # Ours, untuned (2026-12-03: kNN 0.336 vs random init 0.312, linear 0.454 vs 0.430, in
        # 13 min 20 s of training): a ViT-Ti/4 step costs 2 CPU cores several
        # times a ResNet-18 x0.125's, so half the demo batch (300 steps, ~2 epochs); the
        # warm-up the paper's share of the run (40 of 300 epochs); 10x the paper's lr, since
        # 1.5e-4 x 64/256 would barely move AdamW's weights in 300 steps.
        config.batch_size = 64
        config.warmup_epochs = 0.25
        config.base_lr = 1.5e-3
    elif preset == "runlocal":
        config.base_lr = 1.5e-4
