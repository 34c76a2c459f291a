"""Building blocks of the method configs in configs/: the shared keys, view recipes, presets.

Each configs/<method>.py starts from `shared(method)`, sets its paper's values with their sources,
and finishes with `finish_preset(config, preset, ...)` for the presets every method has:
`imagenet` (default: the paper's recipe), `cifar10` (the anchors' CIFAR-10 values), `demo`
(the bundled demo set, minutes on 2 CPU cores) and `runlocal` (a seconds-long smoke run).

A method whose paper also gives a recipe for another backbone offers it as a variant of a
preset, named `<preset>_<variant>`: `configs/mocov3.py:imagenet_vit` is MoCo v3's ViT-S/16
recipe, `demo_vit` and `runlocal_vit` the demo and smoke runs on a ViT-Tiny. The config lists
the variant presets it has (`parse_preset(arg, variants=...)` checks the name) and sets the
method's values for the variant; `finish_preset(config, preset, variant)` sets the shared ones
(the small presets' backbone).
"""

import ml_collections

PRESETS = ("imagenet", "cifar10", "demo", "runlocal")
# Backbone variants of the presets: the suffix of `<preset>_<variant>`.
VARIANTS = ("vit",)


def shared(method: str) -> ml_collections.ConfigDict:
    """The keys every method's config has (names are a contract), at ImageNet values."""
    config = ml_collections.ConfigDict()
    config.method = method
    config.dataset = "imagenet2012"  # TFDS name, "imagefolder:PATH" or "demo"
    config.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir
    # Most GB (1e9 bytes) of a TFRecord-prepared TFDS split that every host loads into its RAM
    # (the encoded images; about twice that while loading). 64: all the usual sets but ImageNet
    # fit (cifar ~0.15 GB, stl10 ~2 GB, imagenette ~1.5 GB), and twice 64 leaves room for the
    # input pipeline and JAX on a multi-chip TPU VM host (roughly 200-400 GB of RAM). imagenet2012
    # train (~150 GB) is over it: prepare it as array_record, read by index from disk instead.
    config.data_ram_limit_gb = 64.0
    config.image_size = 224
    config.batch_size = 4096  # global, over all devices and hosts
    config.num_epochs = 100
    config.total_steps = 0  # > 0 overrides num_epochs
    config.optimizer = "lars"  # lars | lamb | sgd | adamw
    config.base_lr = 0.3  # peak lr = base_lr * batch_size / 256 with linear scaling
    config.lr_scaling = "linear"  # linear | sqrt | none
    config.weight_decay = 1e-6
    config.momentum = 0.9
    config.warmup_epochs = 10.0
    # {group: {schedule: warmup_cosine | constant, lr_multiplier}} for top-level network parts.
    config.param_groups = ml_collections.ConfigDict()
    config.seed = 0
    config.dtype = "bfloat16"  # compute dtype; parameters stay float32
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    # JAX's persistent compilation cache, so a restart (preemption) loads the compiled step instead
    # of compiling it again: "" = <workdir>/compilation_cache, a path, or "off".
    config.compilation_cache_dir = ""
    # One run per workdir (ssl_jax/run_lock.py): a lock left by a run on another host is taken
    # over after this many seconds without its heartbeat (every 30 s); on this host a dead pid
    # frees it at once. 0: take over any lock whose holder is not provably alive on this host.
    config.workdir_lock_stale_after_s = 300.0
    config.log_every_steps = 100
    config.eval_every_steps = 0  # kNN + linear probe on the test split; 0 = only at the end
    config.eval_random_init = False  # also evaluate a randomly initialised encoder at the end
    # Global batch of the frozen-feature extraction (no gradients, so it can exceed the training
    # batch); 0 = the training batch. A small batch makes evaluation per-batch overhead bound.
    config.eval_batch_size = 0
    # At most this many evenly spaced examples of each split in those evaluations; 0 = all.
    config.eval_max_examples = 0
    # At the end: workdir/augmentations.png (the views) and embedding.png (t-SNE of test features).
    config.save_pictures = True
    config.model = ml_collections.ConfigDict(
        dict(
            name="resnet50",
            width=1.0,  # channel multiplier: 1.0 is 64 stem channels
            cifar_stem=ml_collections.FieldReference(None, field_type=bool),  # None: auto, <= 64 px
            # Vision Transformers (model.name vit_t16 | vit_s16 | vit_b16; width must be 1.0):
            patch_size=0,  # 0: the name's 16; 4 or 8 for 32 px data
            pool="cls",  # features: "cls" token or "mean" of the patch tokens
            posemb="learn",  # position embeddings: "learn" or fixed "sincos2d"
            num_heads=0,  # 0: the name's (Ti 3, S 6, B 12); MoCo v3's ViT-S has 12
            layerscale_init=0.0,  # LayerScale's initial gamma (CaiT, DeiT III); 0: off
            drop_path_rate=0.0,  # stochastic depth of the last block, 0 -> rate linearly; 0: off
            # MoCo v3's frozen random patch projection (--stop-grad-conv1): never updated
            frozen_patch_embedding=False,
        )
    )
    config.knn = ml_collections.ConfigDict(dict(k=200, temperature=0.07))  # Wu et al. 2018
    config.probe = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=0.0))  # online probe
    config.augment = ml_collections.ConfigDict()
    return config


def view_recipe(size, **values) -> ml_collections.ConfigDict:
    """A view recipe (ssl_jax/data/augment.py), SimCLR's ImageNet values unless overridden.

    `size` is normally config.get_ref("image_size"), so --config.image_size=N resizes the views.
    """
    recipe = dict(
        size=size,
        crop_area=(0.08, 1.0),  # random resized crop: fraction of the image area
        crop_aspect=(3 / 4, 4 / 3),
        flip_prob=0.5,
        color_jitter_prob=0.8,
        color_jitter_strength=1.0,  # s; brightness, contrast, saturation 0.8s, hue 0.2s
        color_jitter=(),  # explicit (brightness, contrast, saturation, hue) overrides s
        brightness_mode="additive",  # SimCLR v1's code; "multiplicative": v2, BYOL, torchvision
        grayscale_prob=0.2,
        blur_prob=0.5,
        blur_sigma=(0.1, 2.0),
        blur_kernel_fraction=0.1,  # kernel side = 10% of the image side
        solarize_prob=0.0,
    )
    unknown = set(values) - set(recipe)
    if unknown:
        raise KeyError(f"unknown view recipe field(s) {sorted(unknown)}")
    recipe.update(values)
    return ml_collections.ConfigDict(recipe)


def byol_views(config: ml_collections.ConfigDict, **values) -> None:
    """BYOL's asymmetric pair (deepmind-research byol/utils/augmentations.py), also used by MoCo
    v3, Barlow Twins and VICReg: colour jitter (0.4, 0.4, 0.2, 0.1) with multiplicative
    brightness, blur p 1.0 / 0.1, solarisation p 0.0 / 0.2. Sets config.augment.view1/view2."""
    common = dict(color_jitter=(0.4, 0.4, 0.2, 0.1), brightness_mode="multiplicative")
    common.update(values)
    size = config.get_ref("image_size")
    config.augment.view1 = view_recipe(size, **{"blur_prob": 1.0, "solarize_prob": 0.0, **common})
    config.augment.view2 = view_recipe(size, **{"blur_prob": 0.1, "solarize_prob": 0.2, **common})
    config.views = ("view1", "view2")


def mocov2_views(config: ml_collections.ConfigDict, name: str) -> None:
    """MoCo v2's --aug-plus (facebookresearch/moco main_moco.py), also SimSiam's: crop 0.2-1,
    colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8 (torchvision: multiplicative brightness), grey 0.2,
    blur p 0.5, flip; the same recipe for both views."""
    config.augment[name] = view_recipe(
        config.get_ref("image_size"),
        crop_area=(0.2, 1.0),
        color_jitter=(0.4, 0.4, 0.4, 0.1),
        brightness_mode="multiplicative",
    )
    config.views = (name, name)


def local_views(config: ml_collections.ConfigDict, like: str, *, size: int = 96,
                crop_area=(0.05, 0.14)) -> None:  # fmt: skip
    """Multi-crop's local views (SwAV, Caron et al. 2020 section 3.2: 96 px crops of 5-14% of the
    image), off until `--config.num_local_views=N`: the recipe `local` is the global recipe
    `like` at another size and crop area. Global views stay as configured (SwAV's own global
    crops cover 14-100%: set the global recipe's crop_area to match the paper)."""
    recipe = ml_collections.ConfigDict(config.augment[like].to_dict())
    recipe.size, recipe.crop_area = size, crop_area
    config.augment.local = recipe
    config.num_local_views = 0


def small_image_views(config: ml_collections.ConfigDict) -> None:
    """32 px data: no blur (every CIFAR recipe of the anchors drops it)."""
    for recipe in config.augment.values():
        recipe.blur_prob = 0.0


def parse_preset(arg: str | None, variants: tuple[str, ...] = ()) -> tuple[str, str]:
    """A config file's argument -> (preset, variant): "demo" -> ("demo", ""), "demo_vit" ->
    ("demo", "vit"), None -> ("imagenet", ""). `variants` are the variant presets the method's
    config has ("imagenet_vit", ...); any other name is a ValueError that lists the valid ones."""
    name = arg or "imagenet"
    if name in PRESETS:
        return name, ""
    preset, _, variant = name.rpartition("_")
    if name not in variants or preset not in PRESETS or variant not in VARIANTS:
        raise ValueError(f"unknown preset {name!r}: use {', '.join(PRESETS + tuple(variants))}")
    return preset, variant


def finish_preset(
    config: ml_collections.ConfigDict, preset: str, variant: str = ""
) -> ml_collections.ConfigDict:
    """The preset-independent parts of `cifar10`, `demo` and `runlocal` (method values aside);
    with `variant` "vit", the small presets train a ViT-Tiny with 4 px patches (an 8 x 8 grid at
    32 px, 4 x 4 at 16 px; or the patch the method's config set) instead of the ResNet-18 x0.125."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}")
    if variant and variant not in VARIANTS:
        raise ValueError(f"unknown preset variant {variant!r}: use {', '.join(VARIANTS)}")
    if preset == "imagenet":
        return config
    config.image_size = 32
    config.dtype = "float32"
    config.eval_random_init = True
    config.eval_batch_size = 512
    if preset == "cifar10":
        config.dataset = "cifar10"
        config.eval_every_steps = 5000
    elif preset == "demo":
        config.dataset = "demo"
        config.model.name = "resnet18"
        config.model.width = 0.125
        config.checkpoint_every_steps = 100
        config.log_every_steps = 25
    elif preset == "runlocal":
        config.dataset = "demo"
        config.image_size = 16
        config.batch_size = 32
        config.total_steps = 4
        config.warmup_epochs = 0.0
        config.model.name = "resnet18"
        config.model.width = 0.125
        config.checkpoint_every_steps = 2
        config.log_every_steps = 1
        config.eval_random_init = False
        config.eval_max_examples = 1000  # a smoke run: 1,000 train and 1,000 test images
        config.save_pictures = False  # 15 s of t-SNE and drawing; python -m ssl_jax.visualize
    if variant == "vit" and preset in ("demo", "runlocal"):
        # The smallest named ViT (DeiT's Ti) with the 4 px patches that solo-learn's CIFAR ViTs
        # use (scripts/pretrain/cifar/mae.yaml: patch 4 at 32 px), unless the method's config
        # chose a patch.
        config.model.name = "vit_t16"
        config.model.width = 1.0
        config.model.patch_size = config.model.patch_size or 4
    if "local" in config.augment:  # multi-crop's CIFAR analogue: 2 x 32 px + N x 16 px
        config.augment.local.size = config.image_size // 2
    small_image_views(config)
    return config


def evaluation(protocols: tuple[str, ...], preset: str | None) -> ml_collections.ConfigDict:
    """An evaluation config (task "evaluate", ssl_jax/evaluate/protocols.py) for a preset."""
    preset = preset or "imagenet"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}")
    config = ml_collections.ConfigDict()
    config.task = "evaluate"
    config.protocols = protocols
    config.pretrained = ""  # a pretraining workdir or its export/ folder (required)
    config.random_init = False  # same architecture, freshly initialised: the baseline row
    config.dataset = "imagenet2012"  # may differ from the pretraining data (transfer)
    config.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data_ram_limit_gb = 64.0  # as in pretraining configs (shared() above)
    config.image_size = 0  # 0: the resolution the encoder was trained at (export/encoder.json)
    config.eval_batch_size = 1024  # global batch of the feature extraction
    config.seed = 0  # the held-out split and the few-shot draws
    config.knn = ml_collections.ConfigDict(dict(k=200, temperature=0.07))  # Wu et al. 2018
    config.frozen_features = ml_collections.ConfigDict(
        dict(
            # BYOL tunes on 10,000 held-out ImageNet train images (byol/utils/dataset.py).
            holdout_fraction=10_000 / 1_281_167,
            l2_grid=DEFAULT_L2_GRID,
            max_iterations=1000,  # L-BFGS iterations per fit (stops earlier once converged)
        )
    )
    # With one label per class nothing can be held out: the L2 strength is fixed.
    config.fewshot = ml_collections.ConfigDict(dict(shots=(1, 5, 10), draws=5, l2=1e-2))
    # The `augmented` protocol's training run (optimiser, epochs, batch, views); its encoder,
    # data and seed are the evaluation's (ssl_jax/evaluate/protocols.py augmented_config).
    config.augmented = supervised(preset, frozen_encoder=True)
    if preset == "cifar10":
        config.dataset = "cifar10"
        config.knn.temperature = 0.1  # lemniscate cifar.py (NPID's CIFAR setting)
        config.frozen_features.holdout_fraction = 0.1  # 5,000 of the 50,000 train images
    elif preset in ("demo", "runlocal"):
        config.dataset = "demo"
        config.eval_batch_size = 512
        config.frozen_features.holdout_fraction = 0.1  # 1,000 of the 10,000 demo train images
    if preset == "runlocal":
        config.frozen_features.l2_grid = (1e-4, 1e-2, 1.0)
        config.fewshot.shots = (1, 5)
        config.fewshot.draws = 2
    return config


# Half-decade steps over 1e-6..1e2 (Kornblith et al. 2019 search 45 values over 1e-6..1e5).
DEFAULT_L2_GRID = tuple(float(f"{10.0 ** (e / 2):.3g}") for e in range(-12, 5))


def supervised(preset: str | None, *, frozen_encoder: bool) -> ml_collections.ConfigDict:
    """A classifier trained on an encoder (ssl_jax/methods/supervised.py) for a preset:
    fine-tuning (configs/finetune.py) or, with `frozen_encoder`, the augmented linear protocol
    (the `augmented` block of configs/linear_eval.py)."""
    preset = preset or "imagenet"
    config = shared("supervised")
    config.pretrained = ""  # a pretraining workdir or its export/ folder
    config.from_scratch = False  # True (and no pretrained): the supervised-from-scratch baseline
    config.frozen_encoder = frozen_encoder
    # Fine-tuning only: the linear layer on the "encoder"'s features, or on the pretrained
    # projector's first layer, fine-tuned with the encoder ("projector_layer_1": SimCLR v2
    # section 2, tf2/model.py ft_proj_selector=1; the export's projector_layer_1/).
    config.finetune_from = "encoder"
    config.label_fraction = 1.0  # the class-balanced labelled subset of the train split
    # Or a text file of the labelled images' file names, one a line (SimCLR's ImageNet
    # imagenet_subsets/1percent.txt, 10percent.txt): they are the subset, not a draw, and
    # label_fraction must state their share of the train split (0.01, 0.1). "": draw.
    config.label_subset_file = ""
    config.nesterov = False
    config.warmup_epochs = 0.0
    config.weight_decay = 0.0
    config.eval_random_init = False  # a random classifier's accuracy says nothing
    # Random resized crop and flip, no colour distortion, as the SimCLR code fine-tunes and
    # trains its linear layer (tf2/data_util.py preprocess_for_train, color_distort=False).
    config.augment.train = view_recipe(
        config.get_ref("image_size"), color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0
    )
    config.views = ("train",)
    if frozen_encoder:
        # SimCLR linear evaluation (README, tf2/model.py): SGD with Nesterov momentum 0.9, lr
        # 0.1 x B/256, B 4096, 90 epochs, cosine, no warm-up; no weight decay (paper B.6).
        config.optimizer = "sgd"
        config.nesterov = True
        config.base_lr = 0.1
        config.num_epochs = 90
    else:
        # SimCLR v2 fine-tuning on 1% (README): LARS, lr 0.005 x sqrt(B), B 1024, 60 epochs,
        # no weight decay, no warm-up; 30 epochs for 10% (--config.num_epochs=30).
        config.optimizer = "lars"
        config.lr_scaling = "sqrt"
        config.base_lr = 0.005
        config.batch_size = 1024
        config.num_epochs = 60
        config.label_fraction = 0.01
    if preset == "cifar10":
        # No anchor gives CIFAR-10 fine-tuning or linear values: these are ours (the ImageNet
        # recipes at batch 256), not a paper's.
        config.batch_size = 256
        config.num_epochs = 100
    elif preset == "demo":
        # Tuned on 2 CPU cores for the bundled demo set (a minute or two).
        config.batch_size = 64
        config.num_epochs = 30
        config.label_fraction = 1.0 if frozen_encoder else 0.1
        if frozen_encoder:
            config.num_epochs = 10
            config.base_lr = 0.4
        else:
            config.base_lr = 0.02
    elif preset == "runlocal":
        config.label_fraction = 1.0 if frozen_encoder else 0.1
    finish_preset(config, preset)
    config.eval_random_init = False
    return config
