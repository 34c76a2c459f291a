"""BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection.

Online: backbone -> projector -> predictor. Target: backbone -> projector, its parameters an
EMA of the online ones (tau from 0.996 to 1 on a cosine, section 3.2), its BatchNorm statistics
from its own training-mode pass over the same global batch. The loss pairs each view's
prediction with the OTHER view's target projection and sums the two (Eq. 2 symmetrised):

    L = byol(q(view1), z'(view2)) + byol(q(view2), z'(view1))

With multi-crop (`num_local_views` > 0) the target sees the global views only, and L is twice
the mean of byol(q(v), z'(t)) over the pairs (global view t, any other view v).

As in BYOL's code, the target is initialised from a different key than the online network
(its code notes this made no notable difference; `ema.copy_init=True` copies instead, as MoCo).
The encoder that is evaluated and exported is the ONLINE backbone.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from ssl_jax import losses
from ssl_jax.methods import extra_state, network
from ssl_jax.methods.base import MethodBase

TARGET_PARTS = ("backbone", "projector")  # the predictor has no EMA copy


@dataclasses.dataclass(frozen=True)
class EMATargetMethod(MethodBase):
    """A method with an EMA target network (BYOL, MoCo v2, MoCo v3, DINO): init and update
    shared. `target_parts` are the network's top-level parts the target copies."""

    target_parts: ClassVar[tuple[str, ...]] = TARGET_PARTS

    def validate(self) -> None:
        super().validate()
        extra_state.check_tau("ema.tau_base", self.config.ema.tau_base)
        extra_state.check_tau("ema.tau_final", self.config.ema.tau_final)

    def tau(self, step):
        ema = self.config.ema
        return extra_state.cosine_tau(ema.tau_base, step, self.total_steps, tau_final=ema.tau_final)

    def init_extra(self, variables, rng, sample_views):
        if not self.config.ema.copy_init:  # BYOL's code: the target from its own key
            variables = self.network().init(rng, sample_views, train=False)
        return {"target": extra_state.init_target(variables, keep=self.target_parts)}

    def update_extra(self, extra, aux, *, params, step):
        target = {
            "params": extra_state.ema(extra["target"]["params"], params, self.tau(step)),
            "batch_stats": aux["target_batch_stats"],
        }
        return {**extra, "target": target}


@dataclasses.dataclass(frozen=True)
class BYOL(EMATargetMethod):
    has_predictor = True

    def network(self):
        return network.build(self.config, predictor=True)

    supports_multi_crop = True

    def loss(self, outputs, inputs):
        p = jnp.split(outputs["predictions"], len(inputs.views), axis=0)  # V x [B, P], online
        # The target sees the global views only (local crops are never targets).
        num_global = self.num_global_views
        target, target_batch_stats = inputs.apply_target(
            inputs.extra["target"], inputs.views[:num_global]
        )
        z = jnp.split(target["projections"], num_global, axis=0)  # G x [B, P], stop_gradient
        # Every view's prediction against every OTHER global view's target, summed over the two
        # directions as in Eq. 2 (2 x the mean over pairs: with two views, the sum above).
        pairs = network.global_pairs(num_global, len(p))
        loss = 2.0 * sum(losses.byol(p[v], z[t]) for t, v in pairs) / len(pairs)
        metrics = {"ema_tau": self.tau(inputs.step)}
        return loss, metrics, {"target_batch_stats": target_batch_stats}
