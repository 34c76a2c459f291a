"""SimCLR (Chen et al. 2020): two augmented views, a projection MLP, NT-Xent over the global batch.

Both views go through the backbone as one [2B, ...] batch, so BatchNorm statistics cover both
views of the whole global batch (the paper's global BN). There is no state beside the parameters.

Multi-crop (`num_local_views` > 0; SwAV's paper applies it to SimCLR, Caron et al. 2020 section
4.1): NT-Xent is averaged over the ordered pairs (global view i, any other view v), so every local
crop is contrasted with every global one; with the two global views alone this is the loss above.
"""

import dataclasses

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import network
from ssl_jax.methods.base import MethodBase


@dataclasses.dataclass(frozen=True)
class SimCLR(MethodBase):
    supports_multi_crop = True

    def network(self):
        return network.build(self.config)

    def loss(self, outputs, inputs):
        z = jnp.split(outputs["projections"], len(inputs.views), axis=0)  # V x [B, P]
        # NT-Xent is symmetric in its two views: one evaluation per unordered pair, weighted by
        # how many of the ordered (global, other) pairs it stands for (two views: one, x 2 / 2).
        pairs = network.global_pairs(self.num_global_views, len(z))
        total = sum(
            (2.0 if (v, i) in pairs else 1.0) * losses.nt_xent(z[i], z[v], self.config.temperature)
            for i, v in pairs
            if not (v < i and (v, i) in pairs)
        )
        return total / len(pairs), {}, {}
