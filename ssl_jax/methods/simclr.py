"""SimCLR (Chen et al. 2020): two augmented views, a projection MLP, NT-Xent over the global batch.

Both views go through the backbone as one [2B, ...] batch, so BatchNorm statistics cover both
views of the whole global batch (the paper's global BN). There is no state beside the parameters.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import losses, models


class SimCLRNetwork(nn.Module):
    """views: 2 x [B, H, W, 3] uint8 -> features [2B, D], projections [2B, P]."""

    backbone: nn.Module
    projector: nn.Module

    @nn.compact
    def __call__(self, views, train: bool = False):
        batch = views[0].shape[0]
        images = jnp.concatenate(views, axis=0)  # [2B, H, W, 3], view-major
        features = self.backbone(images, train=train)  # [2B, D]
        projections = self.projector(features, train=train)  # [2B, P]
        return {
            "features": features,
            "projections": projections,
            "embedding": projections[:batch],  # [B, P], first view
        }


@dataclasses.dataclass(frozen=True)
class SimCLR:
    config: ml_collections.ConfigDict
    encoder_name: str = "backbone"

    def view_recipes(self) -> list[str]:
        return list(self.config.views)

    def network(self) -> nn.Module:
        backbone = models.build_backbone(self.config)
        head = self.config.projector
        projector = models.MLPHead(
            hidden_dim=head.hidden_dim or backbone.feature_dim,
            out_dim=head.out_dim,
            num_layers=head.num_layers,
            last_bn=head.last_bn,
            dtype=backbone.dtype,
        )
        return SimCLRNetwork(backbone=backbone, projector=projector)

    def init_extra(self, params):
        return {}

    def loss(self, outputs, extra, rng):
        z_a, z_b = jnp.split(outputs["projections"], 2, axis=0)  # 2 x [B, P]
        loss = losses.nt_xent(z_a, z_b, self.config.temperature)
        return loss, {}

    def update_extra(self, extra, params, step: jax.Array):
        return extra
