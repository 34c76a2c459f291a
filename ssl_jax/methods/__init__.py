"""The method registry: config.method -> the class that implements it."""

import ml_collections

from ssl_jax.errors import UserError
from ssl_jax.methods.base import Method
from ssl_jax.methods.simclr import SimCLR

METHODS = {
    "simclr": SimCLR,
}


def get_method(config: ml_collections.ConfigDict) -> Method:
    if config.method not in METHODS:
        raise UserError(f"method={config.method!r} is not one of {', '.join(METHODS)}")
    return METHODS[config.method](config)


__all__ = ["METHODS", "Method", "get_method"]
