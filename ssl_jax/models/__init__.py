"""Backbones and heads. `build_backbone(config)` is the one place a config becomes a backbone."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from ssl_jax.errors import UserError
from ssl_jax.models.classifier import Classifier
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.resnet import STAGE_SIZES, ResNet
from ssl_jax.models.vit import POOLS, POSEMBS, VIT_SIZES, VisionTransformer

BACKBONES = {f"resnet{depth}": depth for depth in STAGE_SIZES}
# name -> (width, depth, num_heads), patch 16 unless config.model.patch_size says otherwise.
VIT_BACKBONES = dict(VIT_SIZES)
VIT_PATCH_SIZE = 16

# Fields of an architecture spec that leave the parameters and the inference function alone: a
# run may pick its own (fine-tune in float32 what was pretrained in bfloat16; drop-path is a
# training regulariser, DINO's student 0.1 while the exported teacher had none).
RUN_FIELDS = ("dtype", "drop_path_rate")

# Above this side the ImageNet stem (7x7 stride 2 + max-pool) no longer throws away most pixels.
CIFAR_STEM_MAX_SIZE = 64


def build_backbone(config: ml_collections.ConfigDict) -> ResNet | VisionTransformer:
    """The backbone named by config.model.name at config.dtype.

    ResNets read config.model.width and .cifar_stem; ViTs read config.model.patch_size (0: 16),
    .num_heads (0: the name's), .pool ("cls" or "mean"), .posemb ("learn" or "sincos2d"),
    .layerscale_init and .drop_path_rate (0: off), and need width 1.0.
    (`model.frozen_patch_embedding` is the optimiser's business: ssl_jax/methods/base.py.)
    """
    name = config.model.name
    if name in VIT_BACKBONES:
        return _build_vit(config)
    if name not in BACKBONES:
        names = [*BACKBONES, *VIT_BACKBONES]
        raise UserError(f"model.name={name!r} is not one of {', '.join(names)}")
    vit_only = [k for k in VIT_ONLY_KEYS if config.model.get(k, None)]
    if vit_only:
        raise UserError(f"model.{vit_only[0]} applies to Vision Transformers only, not {name}: "
                        f"add --config.model.{vit_only[0]}={_OFF[vit_only[0]]}")  # fmt: skip
    cifar_stem = config.model.get("cifar_stem", None)
    if cifar_stem is None:
        cifar_stem = config.image_size <= CIFAR_STEM_MAX_SIZE
    return ResNet(
        depth=BACKBONES[name],
        width=config.model.width,
        cifar_stem=bool(cifar_stem),
        dtype=compute_dtype(config.dtype),
    )


# config.model keys a ResNet would silently ignore when set (their defaults are falsy).
_OFF = {"num_heads": 0, "layerscale_init": 0.0, "drop_path_rate": 0.0,
        "frozen_patch_embedding": False}  # fmt: skip
VIT_ONLY_KEYS = tuple(_OFF)


def _build_vit(config: ml_collections.ConfigDict) -> VisionTransformer:
    name = config.model.name
    if config.model.width != 1.0:
        # A ViT's size is its name (Ti/S/B): a channel multiplier would silently make another
        # architecture than the one named.
        raise UserError(
            f"model.width={config.model.width:g} applies to ResNets only: {name} needs "
            f"--config.model.width=1.0 (pick vit_t16, vit_s16 or vit_b16 for the size)"
        )
    patch_size = int(config.model.get("patch_size", 0)) or VIT_PATCH_SIZE
    if patch_size < 1:
        raise UserError(f"model.patch_size={patch_size} must be positive (0: the name's 16)")
    if config.image_size % patch_size:
        raise UserError(
            f"image_size={config.image_size} does not divide into model.patch_size={patch_size} "
            f"patches: pick a patch that divides it (4 or 8 for 32 px data)"
        )
    pool = config.model.get("pool", "cls")
    if pool not in POOLS:
        raise UserError(f"model.pool={pool!r} must be one of {', '.join(POOLS)}")
    posemb = config.model.get("posemb", "learn")
    if posemb not in POSEMBS:
        raise UserError(f"model.posemb={posemb!r} must be one of {', '.join(POSEMBS)}")
    width, depth, num_heads = VIT_BACKBONES[name]
    num_heads = int(config.model.get("num_heads", 0)) or num_heads
    if num_heads < 1 or width % num_heads:
        raise UserError(f"model.num_heads={num_heads} must divide {name}'s width {width} "
                        "(0: the name's)")  # fmt: skip
    layerscale_init = float(config.model.get("layerscale_init", 0.0))
    if layerscale_init < 0:
        raise UserError(f"model.layerscale_init={layerscale_init:g} must be >= 0 (0: off)")
    drop_path_rate = float(config.model.get("drop_path_rate", 0.0))
    if not 0 <= drop_path_rate < 1:
        raise UserError(f"model.drop_path_rate={drop_path_rate:g} must be in [0, 1) (0: off)")
    return VisionTransformer(
        width=width,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_size,
        posemb=posemb,
        pool=pool,
        layerscale_init=layerscale_init,
        drop_path_rate=drop_path_rate,
        dtype=compute_dtype(config.dtype),
    )


def architecture_spec(backbone: nn.Module) -> dict:
    """A JSON-serialisable description of a built backbone; `backbone_from_spec` inverts it.

    A ResNet gives {"depth", "width", "cifar_stem", "dtype"} with no "name", the dict exports
    carried before ViTs existed, so their encoder.json stays valid. A ViT gives "name": "vit" and
    every field of VisionTransformer, "layerscale_init" and "drop_path_rate" only when they are
    on (the exports written before they existed have neither, and still describe the module).
    """
    dtype = str(jnp.dtype(backbone.dtype))
    if isinstance(backbone, ResNet):
        return {"depth": int(backbone.depth), "width": float(backbone.width),
                "cifar_stem": bool(backbone.cifar_stem), "dtype": dtype}  # fmt: skip
    if isinstance(backbone, VisionTransformer):
        return {
            "name": "vit",
            "width": int(backbone.width),
            "depth": int(backbone.depth),
            "num_heads": int(backbone.num_heads),
            "patch_size": int(backbone.patch_size),
            "posemb": str(backbone.posemb),
            "pool": str(backbone.pool),
            "dtype": dtype,
        } | {
            key: float(getattr(backbone, key))
            for key in ("layerscale_init", "drop_path_rate")
            if getattr(backbone, key)
        }
    raise TypeError(f"no architecture spec for {type(backbone).__name__}")


def backbone_from_spec(arch: dict) -> ResNet | VisionTransformer:
    """The backbone an `architecture_spec` dict describes (no "name": a ResNet, as old exports)."""
    fields = dict(arch)
    name = fields.pop("name", "resnet")
    builders = {"resnet": ResNet, "vit": VisionTransformer}
    if name not in builders:
        raise UserError(
            f"the export's architecture {name!r} is not one this version of ssl_jax builds "
            f"({', '.join(builders)}): update ssl_jax"
        )
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    try:
        return builders[name](**fields)
    except TypeError as e:  # a field this version does not know
        raise UserError(f"the export's architecture {arch} does not describe a {name}: {e}") from e


def model_config(arch: dict) -> dict:
    """The config.model values that build the backbone an `architecture_spec` describes (its
    parameters and inference function: RUN_FIELDS such as drop_path_rate are left to the run).
    A ViT's num_heads and layerscale_init appear only where they differ from the defaults."""
    fields = dict(arch)
    if fields.get("name", "resnet") == "resnet":
        return {"name": f"resnet{fields['depth']}", "width": float(fields["width"]),
                "cifar_stem": bool(fields["cifar_stem"])}  # fmt: skip
    names = [n for n, s in VIT_BACKBONES.items() if s[:2] == (fields["width"], fields["depth"])]
    if not names:
        size = (fields["width"], fields["depth"])
        raise UserError(f"the export's ViT {size} (width, depth) has no model.name here")
    model = {"name": names[0], "width": 1.0, "patch_size": fields["patch_size"],
             "pool": fields["pool"], "posemb": fields["posemb"]}  # fmt: skip
    if fields["num_heads"] != VIT_BACKBONES[names[0]][2]:  # MoCo v3's ViT-S: 12 heads, not 6
        model["num_heads"] = fields["num_heads"]
    if fields.get("layerscale_init", 0.0):
        model["layerscale_init"] = float(fields["layerscale_init"])
    return model


def describe(arch: dict) -> str:
    """A backbone's short name for logs and tables: "resnet18 x0.125", "vit_s16 /4"; a ViT's
    non-default heads and LayerScale follow ("vit_s16 h12", "vit_s16 ls0.1")."""
    model = model_config(arch)
    if model["name"].startswith("vit"):
        patch = model["patch_size"]
        name = model["name"] + ("" if patch == VIT_PATCH_SIZE else f" /{patch}")
        if "num_heads" in model:
            name += f" h{model['num_heads']}"
        if "layerscale_init" in model:
            name += f" ls{model['layerscale_init']:g}"
        return name
    return model["name"] + ("" if model["width"] == 1 else f" x{model['width']:g}")


def param_count(params) -> int:
    """Number of scalars in a parameter tree (arrays or their ShapeDtypeStructs)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def backbone_param_count(backbone, image_size: int = 224) -> int:
    """Parameters of a backbone (no classifier), counted from its shapes without allocating.

    ResNet-18 and ResNet-50 at width 1 give torchvision's counts without `fc`: 11,176,512 and
    23,508,032 (tests/test_models.py); ViT-Ti/S/B/16 at 224 px timm's without `head`: 5,524,416,
    21,665,664 and 85,798,656 (tests/test_vit.py). A ViT's learned position embeddings grow with
    image_size; a ResNet's count does not depend on it.
    """
    images = jnp.zeros((1, image_size, image_size, 3), jnp.uint8)
    shapes = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), images)["params"])
    return param_count(shapes)


def compute_dtype(name: str):
    if name not in ("float32", "bfloat16"):
        raise UserError(f"dtype={name!r} must be 'float32' or 'bfloat16'")
    return jnp.dtype(name)


__all__ = [
    "BACKBONES",
    "RUN_FIELDS",
    "VIT_BACKBONES",
    "Classifier",
    "MLPHead",
    "ResNet",
    "VisionTransformer",
    "architecture_spec",
    "backbone_from_spec",
    "describe",
    "model_config",
    "backbone_param_count",
    "build_backbone",
    "compute_dtype",
    "param_count",
]
