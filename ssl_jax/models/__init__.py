"""Backbones and heads. `build_backbone(config)` is the one place a config becomes a backbone."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax.errors import UserError
from ssl_jax.models.classifier import Classifier
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.resnet import STAGE_SIZES, ResNet

BACKBONES = {f"resnet{depth}": depth for depth in STAGE_SIZES}

# Above this side the ImageNet stem (7x7 stride 2 + max-pool) no longer throws away most pixels.
CIFAR_STEM_MAX_SIZE = 64


def build_backbone(config: ml_collections.ConfigDict) -> ResNet:
    """The backbone named by config.model.name at config.model.width and config.dtype."""
    name = config.model.name
    if name not in BACKBONES:
        raise UserError(f"model.name={name!r} is not one of {', '.join(BACKBONES)}")
    cifar_stem = config.model.get("cifar_stem", None)
    if cifar_stem is None:
        cifar_stem = config.image_size <= CIFAR_STEM_MAX_SIZE
    return ResNet(
        depth=BACKBONES[name],
        width=config.model.width,
        cifar_stem=bool(cifar_stem),
        dtype=compute_dtype(config.dtype),
    )


def param_count(params) -> int:
    """Number of scalars in a parameter tree (arrays or their ShapeDtypeStructs)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def backbone_param_count(backbone, image_size: int = 224) -> int:
    """Parameters of a backbone (no classifier), counted from its shapes without allocating.

    ResNet-18 and ResNet-50 at width 1 give torchvision's counts without `fc`: 11,176,512 and
    23,508,032 (tests/test_models.py).
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
    "Classifier",
    "MLPHead",
    "ResNet",
    "backbone_param_count",
    "build_backbone",
    "compute_dtype",
    "param_count",
]
