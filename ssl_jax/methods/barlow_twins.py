"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of the two views' embeddings,
standardised over the global batch, the identity.

    L = barlow_twins(z1, z2, lambd)       (Eq. 1; C from the GLOBAL batch, as the code's SyncBN)

Projector 8192-8192-8192 at ImageNet scale (Linear without bias, BN, ReLU; the last layer plain).
No extra state.
"""

import dataclasses

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods import network
from ssl_jax.methods.base import MethodBase


@dataclasses.dataclass(frozen=True)
class BarlowTwins(MethodBase):
    def validate(self) -> None:
        super().validate()
        if not self.config.lambd >= 0:
            raise UserError(f"lambd={self.config.lambd} must be >= 0")

    def network(self):
        return network.build(self.config)

    def loss(self, outputs, inputs):
        z1, z2 = jnp.split(outputs["projections"], 2, axis=0)  # 2 x [B, D]
        return losses.barlow_twins(z1, z2, self.config.lambd), {}, {}
