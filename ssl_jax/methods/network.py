"""The network most methods put around the backbone: projector, optionally a predictor.

All views of the global batch go through the backbone as one [V * B, ...] batch, so BatchNorm
statistics cover every view of the whole global batch (SimCLR's global BN; BYOL's, MoCo v3's and
Barlow Twins' SyncBN). The `target` branch (backbone and projector, no predictor) is what an EMA
target network or a stop-gradient branch computes: BYOL and MoCo keep no predictor in the target.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from ssl_jax import models
from ssl_jax.errors import UserError
from ssl_jax.parallel import DATA_AXIS


class SiameseNetwork(nn.Module):
    """views: V x [B, H, W, 3] uint8 -> features [VB, D], projections [VB, P] (+ predictions)."""

    backbone: nn.Module
    projector: nn.Module
    predictor: nn.Module | None = None
    online_views: int | None = None  # use only the first n views online (MoCo v2: 1); None: all

    def __call__(self, views, train: bool = False) -> dict:
        outputs = self.target(views[: self.online_views], train=train)
        if self.predictor is not None:
            outputs["predictions"] = self.predictor(outputs["projections"], train=train)  # [VB, P]
        return outputs

    def target(self, views, train: bool = False) -> dict:
        batch = views[0].shape[0]
        features = backbone_by_resolution(self.backbone, views, train)  # [VB, D], view-major
        projections = self.projector(features, train=train)  # [VB, P]
        return {
            "features": features,
            "projections": projections,
            "embedding": projections[:batch],  # [B, P], first view
        }


def backbone_by_resolution(backbone: nn.Module, views: list, train: bool) -> jax.Array:
    """Backbone features [VB, D] of V views, in view order, one pass per resolution group.

    Consecutive views of the same size go through the backbone as one batch, as the SwAV and
    DINO code run multi-crop (2 global crops, then the local crops): BatchNorm statistics are
    those of each resolution group over the global batch. With views of one size (no multi-crop)
    this is a single pass over all of them.
    """
    groups, start = [], 0
    for end in range(1, len(views) + 1):
        if end == len(views) or views[end].shape[1:3] != views[start].shape[1:3]:
            groups.append(backbone(jnp.concatenate(views[start:end], axis=0), train=train))
            start = end
    return jnp.concatenate(groups, axis=0) if len(groups) > 1 else groups[0]


def global_pairs(num_global: int, num_views: int) -> list[tuple[int, int]]:
    """The ordered (global view, other view) pairs of multi-crop losses: every global view
    against every other view, global or local (SwAV's and DINO's loops)."""
    return [(i, v) for i in range(num_global) for v in range(num_views) if v != i]


def mlp_head(head: ml_collections.ConfigDict, *, in_dim: int, dtype) -> models.MLPHead:
    """An MLPHead from a config block {hidden_dim (0: in_dim), out_dim, num_layers, last_bn...}."""
    for key in ("hidden_dim", "out_dim", "num_layers"):
        if head[key] < 0 or (key != "hidden_dim" and head[key] < 1):
            raise UserError(f"head {key}={head[key]} must be positive")
    return models.MLPHead(
        hidden_dim=head.hidden_dim or in_dim,
        out_dim=head.out_dim,
        num_layers=head.num_layers,
        last_bn=head.get("last_bn", False),
        last_bn_scale=head.get("last_bn_scale", True),
        hidden_bn=head.get("hidden_bn", True),
        last_bias=head.get("last_bias", True),
        dtype=dtype,
    )


def build(
    config: ml_collections.ConfigDict, *, predictor: bool = False, online_views: int | None = None
) -> SiameseNetwork:
    """Backbone + config.projector (+ config.predictor on the projector's output)."""
    backbone = models.build_backbone(config)
    projector = mlp_head(config.projector, in_dim=backbone.feature_dim, dtype=backbone.dtype)
    head = None
    if predictor:
        head = mlp_head(config.predictor, in_dim=config.projector.out_dim, dtype=backbone.dtype)
    return SiameseNetwork(backbone, projector, head, online_views)


def shuffled_bn_target(net, variables, images, rng, mesh):
    """MoCo's shuffling BN (He et al. 2020, section 3.3) for the key encoder, with jax.shard_map.

    The global batch of key images is permuted, each device runs the target branch on its own
    slice with BatchNorm over that slice only (per-device statistics, as with unsynchronised BN
    on each GPU), and the outputs are put back in the original order. A query and its key then
    never share batch statistics, which is what the shuffle is for. The result depends on the
    device count, as the paper's does on the GPU count; with one device it equals global BN.
    The new running statistics are the mean over devices of each device's update.

    Args:
      net: the method's network (with a `target` method).
      variables: the target's {"params", "batch_stats"}.
      images: [N, H, W, 3] global batch of key images, sharded along `data`.
      rng: the key of the permutation.
      mesh: the device mesh.

    Returns:
      (projections [N, P] in the original order, under stop_gradient; new batch_stats).
    """
    perm = jax.random.permutation(rng, images.shape[0])  # [N]
    shuffled = images[perm]  # [N, H, W, 3]

    def per_device(variables, local_images):  # local_images: [N / devices, H, W, 3]
        outputs, mutated = net.apply(
            variables, [local_images], train=True, method="target", mutable=["batch_stats"]
        )
        stats = jax.lax.pmean(mutated["batch_stats"], DATA_AXIS)
        return outputs["projections"], stats

    projections, stats = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(DATA_AXIS), P())
    )(variables, shuffled)
    unshuffled = projections[jnp.argsort(perm)]  # [N, P], row i is image i's key again
    return jax.lax.stop_gradient(unshuffled), stats
