"""Optimisers, parameter masks, learning-rate scaling and schedules.

We compose optax's own LARS / LAMB / SGD / AdamW and only add what SSL recipes need around them:
- masks that keep biases and normalisation parameters out of weight decay and of the LARS/LAMB
  trust ratio (SimCLR appendix B.1; BYOL section 3.2), made explicit because optax's defaults
  decay and adapt every parameter;
- the learning rate scaled from the GLOBAL batch size (SimCLR: linear `base_lr * B / 256` or
  square root `base_lr * sqrt(B)`);
- linear warmup followed by cosine decay to zero, per step;
- parameter groups (`config.param_groups`): a top-level part of the network (e.g. `predictor`)
  with its own learning-rate multiplier or schedule, or frozen for its first epochs, through
  optax.multi_transform; the decay and trust-ratio masks still apply inside every group.
  SimSiam's predictor keeps a constant learning rate this way (Chen & He 2021, section 4.4),
  DINO's last layer is frozen for the first epoch;
- DINO's two extras: a weight-decay schedule (`weight_decay_end`) and gradients clipped per
  parameter tensor (`grad_clip_per_tensor`).
"""

import functools
import math
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl_jax.errors import UserError

OPTIMIZERS = ("lars", "lamb", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")
GROUP_SCHEDULES = ("warmup_cosine", "constant")
GROUP_KEYS = ("schedule", "lr_multiplier", "frozen_epochs")


def decay_mask(params) -> dict:
    """True for parameters that get weight decay and trust-ratio adaptation.

    Kernels (ndim > 1) are adapted; biases, BatchNorm/LayerNorm scales and offsets and a ViT's
    LayerScale gammas (ndim 1) are not, nor a ViT's class token and position embeddings. Anything
    whose path goes through a normalisation layer is excluded too, so a future norm with 2-D
    parameters stays excluded, and so is every `bias` (flax's attention keeps its query, key and
    value biases as [heads, head_dim]: DINO's get_params_groups excludes them by name).
    """

    def is_adapted(path, leaf) -> bool:
        names = [str(getattr(k, "key", k)).lower() for k in path]
        in_norm = any("norm" in n or n.startswith("bn") for n in names)
        # A ViT's class token and position embeddings are not decayed either (timm's
        # no_weight_decay, as in DINO's and MoCo v3's code).
        is_token = bool(names) and names[-1] in ("cls", "pos_embedding")
        is_bias = bool(names) and names[-1] == "bias"
        return leaf.ndim > 1 and not in_norm and not is_token and not is_bias

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
    weight_decay: float | Callable,
    params=None,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """The optimiser named in the config, with decay and trust-ratio masks applied.

    Args:
      name: one of OPTIMIZERS.
      learning_rate: a schedule or a constant (already scaled for the global batch).
      weight_decay: decoupled weight-decay coefficient (SimCLR LARS: 1e-6), or a schedule of it
        (not for LARS, whose optax form takes a constant).
      params: unused; the masks are computed from the tree the optimiser is given (which, inside
        a parameter group, is that group's part of the tree).
      momentum: for LARS and SGD.
      nesterov: Nesterov momentum for SGD (SimCLR's and BYOL's linear evaluation).
    """
    del params
    mask = decay_mask
    if name == "lars" and callable(weight_decay):
        raise UserError("weight_decay_end (a weight-decay schedule) needs optimizer sgd, lamb or "
                        "adamw; LARS takes a constant weight_decay")  # fmt: skip
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
            optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
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
    weight_decay = config.weight_decay
    if config.get("weight_decay_end", None) is not None:  # DINO: cosine from 0.04 to 0.4
        weight_decay = cosine_between(config.weight_decay, config.weight_decay_end, total_steps)
    optimizer = functools.partial(
        make_optimizer,
        name=config.optimizer,
        weight_decay=weight_decay,
        momentum=config.get("momentum", 0.9),
        nesterov=config.get("nesterov", False),
    )
    clip = config.get("grad_clip_per_tensor", 0.0)
    groups = config.get("param_groups", None) or {}
    if not groups:
        return with_clipping(optimizer(learning_rate=schedule), clip), schedule, peak_lr

    check_param_groups(groups, params)
    transforms = {"default": optimizer(learning_rate=schedule)}
    for name, group in groups.items():
        group_peak = peak_lr * group.get("lr_multiplier", 1.0)
        if group.get("schedule", "warmup_cosine") == "constant":
            group_schedule = optax.constant_schedule(group_peak)
        else:
            group_schedule = warmup_cosine(group_peak, warmup_steps, total_steps)
        transforms[name] = optimizer(learning_rate=group_schedule)
        frozen_steps = int(round(group.get("frozen_epochs", 0) * steps_per_epoch))
        if frozen_steps:
            transforms[name] = frozen_until(transforms[name], frozen_steps)

    def labels(tree):
        return {key: jax.tree.map(lambda _, k=key: k if k in groups else "default", sub)
                for key, sub in tree.items()}  # fmt: skip

    tx = optax.multi_transform(transforms, labels)
    return with_clipping(tx, clip), schedule, peak_lr


def cosine_between(start: float, end: float, total_steps: int) -> optax.Schedule:
    """start -> end on a half cosine over the run (DINO's weight decay 0.04 -> 0.4)."""

    def schedule(step):
        progress = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
        return end + (start - end) * (1.0 + jnp.cos(jnp.pi * progress)) / 2.0

    return schedule


def frozen_until(tx: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """`tx` with its gradients and updates zeroed for the first `steps` steps: DINO's last layer
    and SwAV's prototypes in their first epoch (their code drops those gradients, so neither the
    optimiser's moments nor the weight decay touch the parameters meanwhile)."""
    gate = lambda step: (step >= steps).astype(jnp.float32)  # noqa: E731
    return optax.chain(optax.scale_by_schedule(gate), tx, optax.scale_by_schedule(gate))


def clip_per_tensor(max_norm: float) -> optax.GradientTransformation:
    """Each parameter tensor's gradient clipped to norm `max_norm` on its own (DINO utils.py
    clip_gradients), not by the global norm of all of them as optax.clip_by_global_norm."""

    def update(updates, state, params=None):
        del params
        clip = lambda g: g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g) + 1e-6))  # noqa: E731
        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def with_clipping(tx: optax.GradientTransformation, max_norm: float):
    return optax.chain(clip_per_tensor(max_norm), tx) if max_norm > 0 else tx


def freeze(tx: optax.GradientTransformation, frozen: tuple[str, ...]):
    """`tx` for every parameter except those under the paths in `frozen`, whose updates are
    zero whatever the gradient or weight decay (and which keep no optimiser state).

    A path is a top-level part of the network ("backbone": the linear protocol's encoder) or a
    "/"-separated path into it ("backbone/embedding": MoCo v3's frozen patch projection). A path
    that names no parameter is a UserError when the optimiser is initialised.
    """
    if not frozen:
        return tx
    prefixes = [tuple(path.split("/")) for path in frozen]

    def labels(tree):
        names = lambda path: tuple(str(getattr(k, "key", k)) for k in path)  # noqa: E731
        paths = [names(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
        for prefix in prefixes:
            if not any(p[: len(prefix)] == prefix for p in paths):
                raise UserError(f"cannot freeze {'/'.join(prefix)!r}: the network has no such "
                                "parameters")  # fmt: skip
        frozen_leaf = lambda p: any(p[: len(x)] == x for x in prefixes)  # noqa: E731
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "frozen" if frozen_leaf(names(p)) else "train", tree
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def check_param_groups(groups, params) -> None:
    """Every group names a top-level part of the network and known settings."""
    for name, group in groups.items():
        if name not in params:
            raise UserError(
                f"param_groups.{name}: the network has no {name!r} "
                f"(it has: {', '.join(params)}); remove the group or pick one of those"
            )
        unknown = sorted(set(group) - set(GROUP_KEYS))
        if unknown:
            raise UserError(
                f"param_groups.{name}: unknown setting(s) {unknown}; known: {GROUP_KEYS}"
            )
        if group.get("schedule", "warmup_cosine") not in GROUP_SCHEDULES:
            raise UserError(
                f"param_groups.{name}.schedule={group['schedule']!r} is not one of "
                f"{', '.join(GROUP_SCHEDULES)}"
            )
        if not group.get("lr_multiplier", 1.0) > 0:
            raise UserError(f"param_groups.{name}.lr_multiplier must be > 0")
        if group.get("frozen_epochs", 0) < 0:
            raise UserError(f"param_groups.{name}.frozen_epochs must be >= 0")


def flat_mask(params) -> dict[str, bool]:
    """{'backbone/conv_init/kernel': True, ...}: the mask as a flat dict, for logs and tests."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(decay_mask(params)), sep="/")
    return dict(flat)
