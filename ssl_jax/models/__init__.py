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

# Above this side the ImageNet stem (7x7 stride 2 + max-pool) no longer throws away most pixels.
CIFAR_STEM_MAX_SIZE = 64


def build_backbone(config: ml_collections.ConfigDict) -> ResNet | VisionTransformer:
    """The backbone named by config.model.name at config.dtype.

    ResNets read config.model.width and .cifar_stem; ViTs read config.model.patch_size (0: 16),
    .pool ("cls" or "mean") and .posemb ("learn" or "sincos2d"), and need width 1.0.
    """
    name = config.model.name
    if name in VIT_BACKBONES:
        return _build_vit(config)
    if name not in BACKBONES:
        names = [*BACKBONES, *VIT_BACKBONES]
        raise UserError(f"model.name={name!r} is not one of {', '.join(names)}")
    cifar_stem = config.model.get("cifar_stem", None)
    if cifar_stem is None:
        cifar_stem = config.image_size <= CIFAR_STEM_MAX_SIZE
    return ResNet(
        depth=BACKBONES[name],
        width=config.model.width,
        cifar_stem=bool(cifar_stem),
        dtype=compute_dtype(config.dtype),
    )


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
    return VisionTransformer(
        width=width,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_size,
        posemb=posemb,
        pool=pool,
        dtype=compute_dtype(config.dtype),
    )


def architecture_spec(backbone: nn.Module) -> dict:
    """A JSON-serialisable description of a built backbone; `backbone_from_spec` inverts it.

    A ResNet gives {"depth", "width", "cifar_stem", "dtype"} with no "name", the dict exports
    carried before ViTs existed, so their encoder.json stays valid. A ViT gives "name": "vit" and
    every field of VisionTransformer.
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
    """The config.model values that build the backbone an `architecture_spec` describes."""
    fields = dict(arch)
    if fields.get("name", "resnet") == "resnet":
        return {"name": f"resnet{fields['depth']}", "width": float(fields["width"]),
                "cifar_stem": bool(fields["cifar_stem"])}  # fmt: skip
    size = (fields["width"], fields["depth"], fields["num_heads"])
    names = [n for n, s in VIT_BACKBONES.items() if tuple(s) == size]
    if not names:
        raise UserError(f"the export's ViT {size} (width, depth, heads) has no model.name here")
    return {"name": names[0], "width": 1.0, "patch_size": fields["patch_size"],
            "pool": fields["pool"], "posemb": fields["posemb"]}  # fmt: skip


def describe(arch: dict) -> str:
    """A backbone's short name for logs and tables: "resnet18 x0.125", "vit_s16 /4"."""
    model = model_config(arch)
    if model["name"].startswith("vit"):
        patch = model["patch_size"]
        return model["name"] + ("" if patch == VIT_PATCH_SIZE else f" /{patch}")
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
