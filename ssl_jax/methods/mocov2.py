"""MoCo v2 (He et al. 2020; Chen et al. 2020b): queries against their keys and a queue of
earlier keys, keys from a momentum (EMA) encoder.

Query encoder: backbone -> MLP head (2 layers, no BatchNorm: moco/builder.py `--mlp`). Key
encoder: the same, parameters an EMA of the query encoder's (m = 0.999 constant; a cosine to 1
with ema.tau_final = 1), copied at start. MoCo updates the key encoder before computing the keys
of a step; we update it after the optimiser step, which is the same sequence of parameters.

    L = info_nce(q(view1), k(view2), queue, t)              (one direction, as the paper)
    symmetric=True: (info_nce(q1, k2, queue, t) + info_nce(q2, k1, queue, t)) / 2

After each step the l2-normalised keys of the GLOBAL batch (all devices; both views' keys when
symmetric) are written into the queue at its pointer (FIFO), so queue_size must be a multiple of
the keys enqueued per step.

BatchNorm of the key encoder is global-batch BN by default (the spirit of MoCo's shuffle BN: a
query and its key never share per-device batch statistics, because there are none). With
`shuffle_bn=True` the key encoder runs MoCo's shuffling BN instead: keys computed on a permuted
global batch with per-device statistics (network.shuffled_bn_target), which depends on the
device count as the paper's does on the GPU count.
"""

import dataclasses

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import extra_state, network
from ssl_jax.methods.byol import EMATargetMethod


@dataclasses.dataclass(frozen=True)
class MoCoV2(EMATargetMethod):
    def validate(self) -> None:
        super().validate()
        what = "both views of the global batch" if self.config.symmetric else "the global batch"
        extra_state.check_queue_size(self.config.queue_size, self.keys_per_step, what)

    @property
    def keys_per_step(self) -> int:
        return self.config.batch_size * (2 if self.config.symmetric else 1)

    def network(self):
        # One direction needs only view 1 through the query encoder.
        return network.build(self.config, online_views=None if self.config.symmetric else 1)

    def init_extra(self, variables, rng, sample_views):
        extra = super().init_extra(variables, rng, sample_views)
        extra["queue"] = extra_state.init_queue(
            rng, self.config.queue_size, self.config.projector.out_dim
        )
        return extra

    def target_keys(self, inputs, views):
        """Key projections [len(views) * B, P] of the target and its new BN statistics."""
        if self.config.shuffle_bn:
            images = jnp.concatenate(views, axis=0)  # [VB, H, W, 3]
            return network.shuffled_bn_target(
                inputs.net, inputs.extra["target"], images, inputs.rng, inputs.mesh
            )
        keys, batch_stats = inputs.apply_target(inputs.extra["target"], views)
        return keys["projections"], batch_stats

    def loss(self, outputs, inputs):
        t, queue = self.config.temperature, inputs.extra["queue"]["rows"]  # [K, P]
        if self.config.symmetric:
            q1, q2 = jnp.split(outputs["projections"], 2, axis=0)  # 2 x [B, P]
            keys, target_batch_stats = self.target_keys(inputs, inputs.views)
            k1, k2 = jnp.split(keys, 2, axis=0)  # 2 x [B, P]
            loss = (losses.info_nce(q1, k2, queue, t) + losses.info_nce(q2, k1, queue, t)) / 2
            new_keys = jnp.concatenate([k2, k1], axis=0)  # [2B, P]
        else:
            new_keys, target_batch_stats = self.target_keys(inputs, inputs.views[1:])  # [B, P]
            loss = losses.info_nce(outputs["projections"], new_keys, queue, t)  # queries: view 1
        new_keys = new_keys / jnp.linalg.norm(new_keys, axis=1, keepdims=True).clip(1e-6)
        aux = {"target_batch_stats": target_batch_stats, "keys": new_keys}
        return loss, {"ema_tau": self.tau(inputs.step)}, aux

    def update_extra(self, extra, aux, *, params, step):
        extra = super().update_extra(extra, aux, params=params, step=step)
        return {**extra, "queue": extra_state.enqueue(extra["queue"], aux["keys"])}
