"""SwAV (Caron et al. 2020): swapped prediction of online cluster assignments.

Backbone -> projector (2048 -> BN -> ReLU -> 128) -> l2-normalise -> prototypes (a linear layer
without bias, P = 3,000 at ImageNet scale). For each global crop, its codes come from Sinkhorn-
Knopp over the GLOBAL batch (equipartition over the prototypes, epsilon 0.05, 3 iterations);
every other crop (global or local) predicts them with a softmax of its scores at temperature 0.1
(ssl_jax.losses.swav). The prototypes are l2-normalised after every optimiser step (the
`post_update` hook; main_swav.py normalises them before each step, the same sequence) and
frozen for the first epoch (`param_groups.prototypes.frozen_epochs`).

Queue (`queue_length` > 0; main_swav.py `--queue_length`, `--epoch_queue_starts`): small
batches give Sinkhorn too few samples to spread over 3,000 prototypes, so the codes of global
crop i are computed over [queue_i; batch] and only the batch's rows kept. Extra state:

    extra["queue"] = {"rows": [V, K, 128] float32, zeros at start, "ptr": int32}

one queue of K rows per global crop (crops_for_assign), holding the l2-normalised embeddings of
that crop from earlier GLOBAL batches (all devices: main_swav.py's per-GPU queues of K / world
rows, whose Sinkhorn sums are all-reduced, are together this one queue). As in main_swav.py:
from the first step of epoch `epoch_queue_starts` each step writes its batch into the queue
after computing its codes (FIFO: the oldest B rows are overwritten); the queue is used from the
step after it is full, read as the reference does: its last row is no longer zero (rows are
written from the front, so the last is the last filled). Before the start epoch nothing is
written and the queue stays empty, hence unused. The reference keeps the newest rows first
(it shifts); here they sit at a rotating pointer. Sinkhorn treats samples alike whatever their
order, so the codes are the same. The queue's scores use the current prototypes (no gradient:
the codes are targets). Local crops are never enqueued. The metric `queue_in_use` (0 or 1)
says when the queue joined the codes.
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
    """views -> features [VB, D], prototype scores "projections" [VB, P], embedding [B, 128],
    the l2-normalised embeddings of every view [VB, 128] and the prototypes' kernel [128, P]."""

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
        scores = prototypes(z)  # [VB, P]
        return {
            "features": features,
            "projections": scores,
            "embedding": z[:batch],
            "unit_embeddings": z,  # [VB, 128], what the queue stores (global crops)
            "prototypes": prototypes.variables["params"]["kernel"],  # [128, P], the queue's scores
        }


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
        size = c.get("queue_length", 0)
        if size < 0 or size % c.batch_size:
            # main_swav.py silently rounds the length down to a multiple of the global batch.
            hint = (size // c.batch_size) * c.batch_size or c.batch_size
            raise UserError(
                f"queue_length={size} must be 0 (no queue) or a multiple of the global batch "
                f"{c.batch_size}, e.g. --config.queue_length={hint}"
            )
        if c.get("epoch_queue_starts", 0) < 0:
            raise UserError(f"epoch_queue_starts={c.epoch_queue_starts} must be >= 0")

    def network(self) -> SwAVNetwork:
        backbone = models.build_backbone(self.config)
        projector = network.mlp_head(
            self.config.projector, in_dim=backbone.feature_dim, dtype=backbone.dtype
        )
        return SwAVNetwork(backbone, projector, self.config.num_prototypes)

    @property
    def queue_start_step(self) -> int:
        """The first step that writes the queue: the first of epoch `epoch_queue_starts`."""
        return int(round(self.config.get("epoch_queue_starts", 0) * self.steps_per_epoch))

    def init_extra(self, variables, rng, sample_views):
        size = self.config.get("queue_length", 0)
        if not size:
            return {}
        # Zeros, as main_swav.py: an empty queue is recognised by its zero last row.
        dim = self.config.projector.out_dim
        rows = jnp.zeros((self.num_global_views, size, dim), jnp.float32)
        return {"queue": {"rows": rows, "ptr": jnp.zeros((), jnp.int32)}}

    def loss(self, outputs, inputs):
        num_views, num_global = len(inputs.views), self.num_global_views
        batch = inputs.views[0].shape[0]
        scores = outputs["projections"].reshape(num_views, batch, -1)  # [V + L, B, P]
        local = scores[num_global:] if num_views > num_global else None
        c = self.config
        queue = inputs.extra.get("queue")
        if queue is None:
            loss = losses.swav(scores[:num_global], local, c.temperature, c.sinkhorn_iterations,
                               c.epsilon)  # fmt: skip
            return loss, {}, {}
        rows = queue["rows"]  # [V, K, 128]
        prototypes = jax.lax.stop_gradient(outputs["prototypes"])  # [128, P]
        queue_scores = jnp.einsum("vkd,dp->vkp", rows, prototypes)  # [V, K, P]
        # main_swav.py: `use_the_queue or not torch.all(queue[i, -1, :] == 0)`, i.e. full.
        in_use = jnp.any(rows[:, -1, :] != 0)
        loss = losses.swav(scores[:num_global], local, c.temperature, c.sinkhorn_iterations,
                           c.epsilon, queue_scores=queue_scores, use_queue=in_use)  # fmt: skip
        embeddings = outputs["unit_embeddings"][: num_global * batch]  # [V B, 128], global crops
        aux = {"embeddings": jax.lax.stop_gradient(embeddings).reshape(num_global, batch, -1)}
        return loss, {"queue_in_use": in_use.astype(jnp.float32)}, aux

    def update_extra(self, extra, aux, *, params, step):
        if "queue" not in extra:
            return extra
        rows, ptr = extra["queue"]["rows"], extra["queue"]["ptr"]  # [V, K, 128], ()
        new = aux["embeddings"].astype(rows.dtype)  # [V, B, 128]
        written = jax.lax.dynamic_update_slice(rows, new, (0, ptr, 0))
        started = jnp.asarray(step) >= self.queue_start_step
        queue = {
            "rows": jnp.where(started, written, rows),
            "ptr": jnp.where(started, (ptr + new.shape[1]) % rows.shape[1], ptr),
        }
        return {**extra, "queue": queue}

    def post_update(self, params):
        kernel = params["prototypes"]["kernel"]
        return {**params, "prototypes": {**params["prototypes"], "kernel": unit_columns(kernel)}}
