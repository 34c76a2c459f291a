"""SimSiam (Chen & He 2021): one shared encoder, a predictor, and a stop-gradient.

    L = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1))        (Eq. 3, D = negative cosine)

No EMA, no negatives, no extra state. Projector: 3 layers with BN, the last BN without affine
parameters; predictor: a 2-layer bottleneck (2048 -> 512 -> 2048), whose learning rate the
official recipe keeps fixed (`--fix-pred-lr`, section 4.4): config.param_groups.predictor.
"""

import dataclasses

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import network
from ssl_jax.methods.base import MethodBase


@dataclasses.dataclass(frozen=True)
class SimSiam(MethodBase):
    has_predictor = True

    def network(self):
        return network.build(self.config, predictor=True)

    def loss(self, outputs, inputs):
        p1, p2 = jnp.split(outputs["predictions"], 2, axis=0)  # 2 x [B, P]
        z1, z2 = jnp.split(outputs["projections"], 2, axis=0)  # 2 x [B, P]; no gradient via D
        loss = 0.5 * losses.negative_cosine(p1, z2) + 0.5 * losses.negative_cosine(p2, z1)
        return loss, {}, {}
