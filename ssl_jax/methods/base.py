"""What a self-supervised method provides to the generic trainer.

A method owns only what makes it different: the views it asks the pipeline for, its networks
around the shared backbone, any state beside the parameters (EMA target, queue, centre), and its
loss. The trainer owns everything else (data, sharding, optimiser, checkpoints, evaluation) and
never branches on a method's name.

Conventions the trainer relies on:
- `network()` returns a Linen module with a submodule named `backbone` (the encoder that is
  evaluated and exported) whose `__call__(views, train)` takes the list of uint8 view batches,
  one [B, H, W, 3] array per recipe, and returns a dict with at least
    "features":  [V * B, D] backbone features, views stacked in recipe order;
    "embedding": [B, P] the method's embedding of the first view (for health metrics).
- `loss(outputs, extra, rng)` returns (scalar float32 loss, dict of scalar metrics) for the
  GLOBAL batch, computed with a function from ssl_jax.losses.
"""

from typing import Any, Protocol

import flax.linen as nn
import jax

PyTree = Any


class Method(Protocol):
    encoder_name: str  # the submodule that is "the encoder": evaluated, exported

    def view_recipes(self) -> list[str]:
        """Names of view recipes (keys of config.augment), one per view."""

    def network(self) -> nn.Module:
        """The module applied to the views: backbone plus the method's heads."""

    def init_extra(self, params: PyTree) -> PyTree:
        """State beside the parameters (EMA target, queue, ...); {} when there is none."""

    def loss(self, outputs: dict, extra: PyTree, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Loss and metrics of one global batch from the network's outputs."""

    def update_extra(self, extra: PyTree, params: PyTree, step: jax.Array) -> PyTree:
        """The extra state after an optimiser step (e.g. the EMA of `params`)."""
