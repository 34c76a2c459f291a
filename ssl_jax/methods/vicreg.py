"""VICReg (Bardes, Ponce & LeCun 2022): invariance, variance and covariance terms on the two
views' expander outputs, over the global batch.

    L = vicreg(z1, z2, sim_coeff=25, std_coeff=25, cov_coeff=1)      (Eq. 6)

Expander 8192-8192-8192 at ImageNet scale (the last layer without BN). No extra state.
"""

import dataclasses

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.errors import UserError
from ssl_jax.methods import network
from ssl_jax.methods.base import MethodBase


@dataclasses.dataclass(frozen=True)
class VICReg(MethodBase):
    def validate(self) -> None:
        super().validate()
        for key in ("sim_coeff", "std_coeff", "cov_coeff"):
            if not self.config[key] >= 0:
                raise UserError(f"{key}={self.config[key]} must be >= 0")

    def network(self):
        return network.build(self.config)

    def loss(self, outputs, inputs):
        z1, z2 = jnp.split(outputs["projections"], 2, axis=0)  # 2 x [B, D]
        c = self.config
        loss = losses.vicreg(z1, z2, c.sim_coeff, c.std_coeff, c.cov_coeff)
        return loss, {}, {}
