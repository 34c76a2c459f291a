"""What a self-supervised method provides to the generic trainer.

A method owns only what makes it different: the views it asks the pipeline for, its networks
around the shared backbone, any state beside the parameters (EMA target, queue, centre), and its
loss. The trainer owns everything else (data, sharding, optimiser, checkpoints, evaluation) and
never branches on a method's name.

One train step, as the trainer runs it (ssl_jax.train.train_step), for the GLOBAL batch:

    outputs = net.apply(params, views, train=True)               online forward, BN over the batch
    loss, metrics, aux = method.loss(outputs, StepInputs(...))   under jax.grad w.r.t. params
    params = method.post_update(optimiser(params, grads))
    extra = method.update_extra(extra, aux, params=params, step=step)

Conventions the trainer relies on:
- `network()` returns a Linen module with a submodule named `backbone` (the encoder that is
  evaluated and exported) whose `__call__(views, train)` takes the list of uint8 view batches,
  one [B, H, W, 3] array per recipe, and returns a dict with at least
    "features":  [V * B, D] backbone features of the views it encodes (all, or the first
                 `online_views`), stacked in recipe order; the first B rows are view 1;
    "embedding": [B, P] the method's embedding of the first view (for health metrics).
  Networks with an EMA target also define `target(views, train)`, the branch the target has
  (methods/network.py: backbone and projector, no predictor).
- `init_extra(variables, rng, sample_views)` returns the state beside the parameters; it is
  part of the TrainState, so it is replicated, donated and checkpointed with the rest.
- `loss(outputs, inputs)` returns (scalar float32 loss, dict of scalar metrics, aux) for the
  GLOBAL batch, the loss computed with a function from ssl_jax.losses. `inputs.apply_target`
  runs the network's target branch on the same views with other variables (the EMA target's)
  in training mode and returns (outputs, new batch_stats) with the outputs under stop_gradient.
  `aux` is any pytree the method wants to carry from the loss to `update_extra` (the keys to
  enqueue, the target's new BatchNorm statistics); {} when there is none.
- `update_extra(extra, aux, params=..., step=...)` returns the extra state after the optimiser
  step, given the NEW online parameters (EMA targets: tau * target + (1 - tau) * params).
- `validate()` raises UserError for a config the method cannot run (before any work starts).
- `post_update(params)` projects the parameters after each optimiser step (SwAV normalises its
  prototypes); the identity by default.
- `load_pretrained(state)` fills a FRESH state from files (a pretrained encoder to fine-tune, a
  teacher to distil from); the trainer calls it once, never on resume, and shards the result.
- `train_source(source)` returns the train split as the method trains on it (default: as
  loaded, after any `label_fraction` subset); distillation with a labelled loss keeps the labels
  of the teacher's labelled subset only.
- `encoder_variables(state)` picks the encoder that is evaluated and exported (default: the
  online backbone).
- `frozen_parts()` names parts of the network the optimiser never changes, top-level ("backbone":
  the linear protocol's encoder) or "/"-paths into them ("backbone/embedding": MoCo v3's frozen
  random patch projection, `model.frozen_patch_embedding`): their updates are zero and they carry
  no optimiser state, so not even weight decay moves them.
- Methods with `has_classifier` (supervised fine-tuning, the augmented linear protocol,
  distillation) output "logits" [VB, C] and are evaluated by their own top-1 / top-5 on the
  test split, reported as `<result_name>_top1`, instead of kNN and a linear probe on the
  backbone's features; they get no online probe.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import flax.linen as nn
import jax
import ml_collections

from ssl_jax.errors import UserError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """What a method's loss sees besides the online network's outputs."""

    views: list  # V x [B, H, W, 3] uint8, the GLOBAL batch (sharded along `data`)
    extra: PyTree  # the method's state before this step
    rng: jax.Array  # a fresh key for this step
    step: jax.Array  # int32, the number of steps already taken
    # (variables, views) -> (outputs, new batch_stats): the network's `target` branch in training
    # mode with the given variables, outputs under stop_gradient.
    apply_target: Callable[[PyTree, list], tuple[dict, PyTree]]
    net: Any = None  # the network module, for methods that apply it in other ways
    mesh: Any = None  # the device mesh, for per-device computations with jax.shard_map
    labels: jax.Array | None = None  # int32 [B] of the first view's images (-1: unlabelled)


class Method(Protocol):
    encoder_name: str  # the submodule that is "the encoder": evaluated, exported

    def validate(self) -> None:
        """Raise UserError for method settings that cannot work (before any work starts)."""

    def view_recipes(self) -> list[str]:
        """Names of view recipes (keys of config.augment), one per view."""

    def network(self) -> nn.Module:
        """The module applied to the views: backbone plus the method's heads."""

    def init_extra(self, variables: PyTree, rng: jax.Array, sample_views: list) -> PyTree:
        """State beside the parameters (EMA target, queue, ...); {} when there is none."""

    def loss(self, outputs: dict, inputs: StepInputs) -> tuple[jax.Array, dict, PyTree]:
        """Loss, metrics and aux (carried to update_extra) of one global batch."""

    def update_extra(self, extra: PyTree, aux: PyTree, *, params: PyTree, step: jax.Array):
        """The extra state after an optimiser step (e.g. the EMA of the new `params`)."""


@dataclasses.dataclass(frozen=True)
class MethodBase:
    """Defaults for the parts most methods share: two views from config.views, no extra state.

    `total_steps` is the length of the run, for schedules a method owns (the EMA rate);
    `num_classes` is the train split's (0: unlabelled, or not known yet when a config is checked).
    """

    config: ml_collections.ConfigDict
    total_steps: int = 0
    num_classes: int = 0
    steps_per_epoch: int = 0  # for schedules a method owns in epochs (DINO's teacher temperature)
    encoder_name: ClassVar[str] = "backbone"
    has_predictor: ClassVar[bool] = False
    has_classifier: ClassVar[bool] = False
    supports_multi_crop: ClassVar[bool] = False  # accepts config.num_local_views > 0
    result_name: ClassVar[str] = ""  # results.json's `<result_name>_top1` (has_classifier)

    def validate(self) -> None:
        temperature = self.config.get("temperature", None)
        if temperature is not None and not temperature > 0:
            raise UserError(f"temperature={temperature} must be > 0")
        if not self.has_predictor and self.config.get("predictor", None) is not None:
            raise UserError(
                f"{self.config.method} has no predictor; remove the `predictor` config block"
            )
        local = self.config.get("num_local_views", 0)
        if local < 0 or (local and not self.supports_multi_crop):
            raise UserError(f"num_local_views={local}: {self.config.method} takes no local crops "
                            "(multi-crop); use 0")  # fmt: skip

    @property
    def num_global_views(self) -> int:
        return len(self.config.views)

    def view_recipes(self) -> list[str]:
        """config.views (the global views), then `num_local_views` views of recipe `local`."""
        return list(self.config.views) + ["local"] * self.config.get("num_local_views", 0)

    def init_extra(self, variables, rng, sample_views):
        return {}

    def update_extra(self, extra, aux, *, params, step):
        return extra

    def load_pretrained(self, state):
        return state

    def train_source(self, source):
        return source

    def post_update(self, params):
        """The parameters after each optimiser step, before update_extra (SwAV: unit-norm
        prototypes)."""
        return params

    def frozen_parts(self) -> tuple[str, ...]:
        """Paths the optimiser leaves alone (ssl_jax.optim.freeze). The ViT's patch projection
        with `model.frozen_patch_embedding`: MoCo v3's --stop-grad-conv1 (vits.py sets
        requires_grad=False on its weight and bias, so AdamW's weight decay skips them too)."""
        if self.config.model.get("frozen_patch_embedding", False):
            return (f"{self.encoder_name}/embedding",)
        return ()

    def encoder_variables(self, state) -> dict:
        """{"params", "batch_stats"} of the encoder that is evaluated and exported: the online
        backbone (DINO: the teacher's)."""
        name = self.encoder_name
        # A ViT has no BatchNorm: no batch_stats.
        return {"params": state.params[name], "batch_stats": state.batch_stats.get(name, {})}

    def extra_results(self) -> dict:
        """Facts for results.json beside the evaluation (a distillation's teacher)."""
        return {}
