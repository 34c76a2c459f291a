"""MoCo v3 (Chen, Xie & He 2021): symmetric InfoNCE between an online predictor and an EMA key
encoder, negatives from the global batch of keys, no queue.

Online: backbone -> projector -> predictor (queries). Momentum encoder: backbone -> projector
(keys), parameters an EMA of the online ones with m from 0.99 to 1 on a cosine, copied at
start. As the official code (moco-v3 moco/builder.py), each direction's cross-entropy is scaled
by 2t and the two directions are summed:

    L = 2t * info_nce(q1, k2, None, t) + 2t * info_nce(q2, k1, None, t)

The keys of the whole global batch are the negatives (the code all-gathers them).
"""

import dataclasses

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import network
from ssl_jax.methods.byol import EMATargetMethod


@dataclasses.dataclass(frozen=True)
class MoCoV3(EMATargetMethod):
    has_predictor = True

    def network(self):
        return network.build(self.config, predictor=True)

    def loss(self, outputs, inputs):
        t = self.config.temperature
        q1, q2 = jnp.split(outputs["predictions"], 2, axis=0)  # 2 x [B, P]
        keys, target_batch_stats = inputs.apply_target(inputs.extra["target"], inputs.views)
        k1, k2 = jnp.split(keys["projections"], 2, axis=0)  # 2 x [B, P], stop_gradient
        loss = 2 * t * (losses.info_nce(q1, k2, None, t) + losses.info_nce(q2, k1, None, t))
        metrics = {"ema_tau": self.tau(inputs.step)}
        return loss, metrics, {"target_batch_stats": target_batch_stats}
