"""SwAV (Caron et al. 2020): swapped prediction of online cluster assignments.

Backbone -> projector (2048 -> BN -> ReLU -> 128) -> l2-normalise -> prototypes (a linear layer
without bias, P = 3,000 at ImageNet scale). For each global crop, its codes come from Sinkhorn-
Knopp over the GLOBAL batch (equipartition over the prototypes, epsilon 0.05, 3 iterations);
every other crop (global or local) predicts them with a softmax of its scores at temperature 0.1
(ssl_jax.losses.swav). The prototypes are l2-normalised after every optimiser step (the
`post_update` hook; main_swav.py normalises them before each step, the same sequence) and
frozen for the first epoch (`param_groups.prototypes.frozen_epochs`). No state beside the
parameters: the optional queue of past embeddings for small batches is not built yet.
Sources: facebookresearch/swav main_swav.py, src/resnet50.py, scripts/*.sh.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import losses, models
from ssl_jax.errors import UserError
from ssl_jax.methods import network
from ssl_jax.methods.base import MethodBase


def unit_columns(kernel: jax.Array) -> jax.Array:
    """[D, P] -> each prototype (column) scaled to norm 1."""
    return losses.l2_normalize(kernel, axis=0)


class SwAVNetwork(nn.Module):
    """views -> features [VB, D], prototype scores "projections" [VB, P], embedding [B, 128]."""

    backbone: nn.Module
    projector: nn.Module
    num_prototypes: int

    @nn.compact
    def __call__(self, views, train: bool = False) -> dict:
        batch = views[0].shape[0]
        features = network.backbone_by_resolution(self.backbone, views, train)  # [VB, D]
        z = self.projector(features, train=train).astype(jnp.float32)  # [VB, 128]
        z = losses.l2_normalize(z)
        # Unit-norm prototypes from the start; post_update keeps them so after every step.
        init = lambda *a: unit_columns(nn.initializers.lecun_normal()(*a))  # noqa: E731
        prototypes = nn.Dense(self.num_prototypes, use_bias=False, kernel_init=init,
                              name="prototypes")  # fmt: skip
        return {"features": features, "projections": prototypes(z), "embedding": z[:batch]}


@dataclasses.dataclass(frozen=True)
class SwAV(MethodBase):
    supports_multi_crop = True

    def validate(self) -> None:
        super().validate()
        c = self.config
        if not c.epsilon > 0 or c.sinkhorn_iterations < 0 or c.num_prototypes < 1:
            raise UserError("swav needs epsilon > 0, sinkhorn_iterations >= 0 and "
                            "num_prototypes >= 1")  # fmt: skip
        if len(c.views) < 2:
            raise UserError("swav swaps predictions between at least 2 global views")

    def network(self) -> SwAVNetwork:
        backbone = models.build_backbone(self.config)
        projector = network.mlp_head(
            self.config.projector, in_dim=backbone.feature_dim, dtype=backbone.dtype
        )
        return SwAVNetwork(backbone, projector, self.config.num_prototypes)

    def loss(self, outputs, inputs):
        num_views, num_global = len(inputs.views), self.num_global_views
        scores = outputs["projections"].reshape(num_views, inputs.views[0].shape[0], -1)
        local = scores[num_global:] if num_views > num_global else None
        c = self.config
        loss = losses.swav(scores[:num_global], local, c.temperature, c.sinkhorn_iterations,
                           c.epsilon)  # fmt: skip
        return loss, {}, {}

    def post_update(self, params):
        kernel = params["prototypes"]["kernel"]
        return {**params, "prototypes": {**params["prototypes"], "kernel": unit_columns(kernel)}}
