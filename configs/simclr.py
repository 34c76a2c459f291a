"""SimCLR (Chen et al. 2020) pretraining configs.

    python -m ssl_jax.main --config=configs/simclr.py:demo --workdir=/tmp/ssl_demo
    python -m ssl_jax.main --config=configs/simclr.py:cifar10 --workdir=runs/simclr_cifar10 \
        --config.dataset=imagefolder:/data/cifar10
    python -m ssl_jax.main --config=configs/simclr.py --workdir=runs/simclr_r50 \
        --config.data_dir=/data/tfds                  # ImageNet, ResNet-50, 100 epochs

Presets (the argument after the colon):
  imagenet (default)  the paper's ResNet-50 ImageNet recipe (section 4, appendix B.1).
  cifar10             the paper's CIFAR-10 recipe (appendix B.9): ResNet-50 with the CIFAR stem,
                      colour strength 0.5, no blur, temperature 0.5.
  demo                a narrow ResNet-18 (x0.1875) on the embedded demo set: kNN top-1 0.40
                      (random encoder 0.24) in under 5 minutes on 2 CPU cores.
  runlocal            a tiny run for tests and smoke checks (seconds).
"""

import ml_collections

from ssl_jax import config_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "imagenet"
    config = config_base.shared("simclr")
    # ImageNet: LARS, lr 0.3 x B/256, wd 1e-6, B 4096, 10 warmup epochs, 100 epochs
    # (google-research/simclr tf2/run.py and README).
    config.temperature = 0.1  # tf2/objective.py; 0.5 for CIFAR (README)
    config.projector = ml_collections.ConfigDict(
        dict(hidden_dim=0, out_dim=128, num_layers=2, last_bn=False)  # hidden 0 = backbone dim
    )  # 2 layers: v1 paper; 3 layers with last_bn: v2 code (num_proj_layers=3)
    config.views = ("simclr", "simclr")  # recipe names, one per view
    # Appendix A: crop 0.08-1, flip, colour jitter s=1 p 0.8 (random order), grey 0.2, blur 0.5.
    config.augment.simclr = config_base.view_recipe(config.get_ref("image_size"))

    if preset == "cifar10":
        config.batch_size = 512
        config.num_epochs = 1000
        config.base_lr = 1.0
        config.temperature = 0.5
        config.augment.simclr.color_jitter_strength = 0.5
    elif preset == "demo":
        # Tuned for 2 CPU cores (benchmarks/results/demo_sweep_cpu.md; the README's quick start
        # says what it reaches): a wider backbone for fewer steps (width 0.1875 below), a
        # 512-wide projector instead of the backbone's 96 and crops of 0.2-1 of the area (MoCo
        # v2's and SimSiam's crop, method-recipes.md) beat the ResNet-18 x0.125 for 500 steps.
        config.batch_size = 128
        config.total_steps = 340  # 4.4 epochs of the 10,000 demo images
        config.base_lr = 1.0
        config.warmup_epochs = 0.5
        config.temperature = 0.2
        config.projector.hidden_dim = 512
        config.augment.simclr.color_jitter_strength = 0.5
        config.augment.simclr.crop_area = (0.2, 1.0)
    elif preset == "runlocal":
        config.projector.out_dim = 16
        config.augment.simclr.color_jitter_strength = 0.5
    # Multi-crop, off by default: --config.num_local_views=6 adds 6 local crops (96 px; 16 px in
    # the 32 px presets) of the simclr recipe as it stands after the preset.
    config_base.local_views(config, "simclr")
    config = config_base.finish_preset(config, preset)
    if preset == "demo":
        config.model.width = 0.1875  # 12 stem channels, 96-d features (the common demo's 0.125)
    return config
