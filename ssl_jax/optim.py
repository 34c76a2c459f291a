"""Optimisers, parameter masks, learning-rate scaling and schedules.

We compose optax's own LARS / LAMB / SGD / AdamW and only add what SSL recipes need around them:
- masks that keep biases and normalisation parameters out of weight decay and of the LARS/LAMB
  trust ratio (SimCLR appendix B.1; BYOL section 3.2), made explicit because optax's defaults
  decay and adapt every parameter;
- the learning rate scaled from the GLOBAL batch size (SimCLR: linear `base_lr * B / 256` or
  square root `base_lr * sqrt(B)`);
- linear warmup followed by cosine decay to zero, per step.
"""

import math
from collections.abc import Callable

import flax
import jax
import ml_collections
import optax

from ssl_jax.errors import UserError

OPTIMIZERS = ("lars", "lamb", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")


def decay_mask(params) -> dict:
    """True for parameters that get weight decay and trust-ratio adaptation.

    Kernels (ndim > 1) are adapted; biases and BatchNorm/LayerNorm scales and offsets (ndim 1)
    are not. Anything whose path goes through a normalisation layer is excluded too, so a
    future norm with 2-D parameters stays excluded.
    """

    def is_adapted(path, leaf) -> bool:
        names = [str(getattr(k, "key", k)).lower() for k in path]
        in_norm = any("norm" in n or n.startswith("bn") for n in names)
        return leaf.ndim > 1 and not in_norm

    return jax.tree_util.tree_map_with_path(is_adapted, params)


def scaled_learning_rate(base_lr: float, global_batch: int, scaling: str) -> float:
    """The peak learning rate for a global batch (SimCLR appendix B.1)."""
    if scaling == "linear":
        return base_lr * global_batch / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if scaling == "none":
        return base_lr
    raise UserError(f"lr_scaling={scaling!r} is not one of {', '.join(LR_SCALINGS)}")


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to peak_lr over warmup_steps, then cosine decay to 0 at total_steps."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=0.0,
    )


def make_optimizer(
    *,
    name: str,
    learning_rate: Callable | float,
    weight_decay: float,
    params,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """The optimiser named in the config, with decay and trust-ratio masks applied.

    Args:
      name: one of OPTIMIZERS.
      learning_rate: a schedule or a constant (already scaled for the global batch).
      weight_decay: decoupled weight-decay coefficient (SimCLR LARS: 1e-6).
      params: the parameter tree (or its shapes), used to build the masks.
      momentum: for LARS and SGD.
    """
    mask = decay_mask(params)
    if name == "lars":
        return optax.lars(
            learning_rate,
            weight_decay=weight_decay,
            weight_decay_mask=mask,
            trust_ratio_mask=mask,
            momentum=momentum,
        )
    if name == "lamb":
        # optax.lamb has one mask for decay; the trust ratio is applied to every leaf there, so we
        # build LAMB from its parts to give the ratio the same mask (You et al. 2020, Alg. 2).
        return optax.chain(
            optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
            optax.masked(optax.add_decayed_weights(weight_decay), mask),
            optax.masked(optax.scale_by_trust_ratio(), mask),
            optax.scale_by_learning_rate(learning_rate),
        )
    if name == "sgd":
        return optax.chain(
            optax.masked(optax.add_decayed_weights(weight_decay), mask),
            optax.sgd(learning_rate, momentum=momentum, nesterov=False),
        )
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask)
    raise UserError(f"optimizer={name!r} is not one of {', '.join(OPTIMIZERS)}")


def from_config(
    config: ml_collections.ConfigDict, *, params, total_steps: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule, float]:
    """Optimiser and schedule from the shared config keys; also returns the peak learning rate."""
    peak_lr = scaled_learning_rate(config.base_lr, config.batch_size, config.lr_scaling)
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    schedule = warmup_cosine(peak_lr, warmup_steps, total_steps)
    tx = make_optimizer(
        name=config.optimizer,
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        params=params,
        momentum=config.get("momentum", 0.9),
    )
    return tx, schedule, peak_lr


def flat_mask(params) -> dict[str, bool]:
    """{'backbone/conv_init/kernel': True, ...}: the mask as a flat dict, for logs and tests."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(decay_mask(params)), sep="/")
    return dict(flat)
