"""SimCLR (Chen et al. 2020): two augmented views, a projection MLP, NT-Xent over the global batch.

Both views go through the backbone as one [2B, ...] batch, so BatchNorm statistics cover both
views of the whole global batch (the paper's global BN). There is no state beside the parameters.
"""

import dataclasses

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import network
from ssl_jax.methods.base import MethodBase


@dataclasses.dataclass(frozen=True)
class SimCLR(MethodBase):
    def network(self):
        return network.build(self.config)

    def loss(self, outputs, inputs):
        z_a, z_b = jnp.split(outputs["projections"], 2, axis=0)  # 2 x [B, P]
        return losses.nt_xent(z_a, z_b, self.config.temperature), {}, {}
