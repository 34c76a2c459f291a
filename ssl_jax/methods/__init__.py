"""The method registry: config.method -> the class that implements it."""

import ml_collections

from ssl_jax.errors import UserError
from ssl_jax.methods.barlow_twins import BarlowTwins
from ssl_jax.methods.base import Method, MethodBase, StepInputs
from ssl_jax.methods.byol import BYOL
from ssl_jax.methods.dino import DINO
from ssl_jax.methods.distill import Distill
from ssl_jax.methods.mocov2 import MoCoV2
from ssl_jax.methods.mocov3 import MoCoV3
from ssl_jax.methods.simclr import SimCLR
from ssl_jax.methods.simsiam import SimSiam
from ssl_jax.methods.supervised import Supervised
from ssl_jax.methods.swav import SwAV
from ssl_jax.methods.vicreg import VICReg

METHODS = {
    "simclr": SimCLR,
    "mocov2": MoCoV2,
    "mocov3": MoCoV3,
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "dino": DINO,
    "swav": SwAV,
    "supervised": Supervised,
    "distill": Distill,
}


def get_method(
    config: ml_collections.ConfigDict,
    *,
    total_steps: int = 0,
    num_classes: int = 0,
    steps_per_epoch: int = 0,
) -> Method:
    """The method named by config.method, its settings checked (UserError when they can't run)."""
    if config.method not in METHODS:
        raise UserError(f"method={config.method!r} is not one of {', '.join(METHODS)}")
    method = METHODS[config.method](
        config, total_steps=total_steps, num_classes=num_classes, steps_per_epoch=steps_per_epoch
    )
    method.validate()
    return method


__all__ = ["METHODS", "Method", "MethodBase", "StepInputs", "get_method"]
