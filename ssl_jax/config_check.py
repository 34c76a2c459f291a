"""Checks on a config before any work starts, so mistakes surface as one clear line."""

import ml_collections

from ssl_jax import fileio
from ssl_jax.errors import UserError

# The keys every method's config has (a contract: tests and tools use these names).
SHARED_KEYS = (
    "method", "dataset", "data_dir", "image_size", "batch_size", "num_epochs", "total_steps",
    "optimizer", "base_lr", "lr_scaling", "weight_decay", "warmup_epochs", "seed", "dtype",
    "checkpoint_every_steps", "keep_checkpoints", "log_every_steps", "eval_every_steps",
    "model.name", "model.width",
)  # fmt: skip

# The evaluation task's protocols (ssl_jax/evaluate/protocols.py runs them).
PROTOCOLS = ("knn", "frozen_features", "fewshot", "augmented")

_POSITIVE = ("image_size", "batch_size", "checkpoint_every_steps", "keep_checkpoints",
             "log_every_steps")  # fmt: skip
_NON_NEGATIVE = ("num_epochs", "total_steps", "warmup_epochs", "eval_every_steps",
                 "eval_batch_size", "eval_max_examples", "weight_decay",
                 "grad_clip_per_tensor", "data_ram_limit_gb")  # fmt: skip


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
    if config is None:
        raise UserError("--config is required, e.g. --config=configs/simclr.py:demo")
    for key in SHARED_KEYS:
        try:
            _get(config, key)
        except (KeyError, AttributeError):
            raise UserError(f"the config has no {key!r}; every method's config needs it") from None
    for key in _POSITIVE:
        if not config[key] > 0:
            raise UserError(f"{key}={config[key]} must be > 0")
    for key in _NON_NEGATIVE:
        if config.get(key, 0) < 0:  # eval_* keys are newer than some configs: absent is 0
            raise UserError(f"{key}={config[key]} must be >= 0")
    if config.total_steps == 0 and config.num_epochs == 0:
        raise UserError("set num_epochs or total_steps (both are 0)")
    if not config.base_lr > 0:
        raise UserError(f"base_lr={config.base_lr} must be > 0")
    return config


def validate_evaluation(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks an evaluation config (task "evaluate": configs/linear_eval.py, fewshot.py)."""
    if not config.pretrained:
        raise UserError("set --config.pretrained=PATH: a pretraining workdir or its export/ folder")
    if not fileio.is_dir(config.pretrained):
        raise UserError(f"pretrained={config.pretrained!r} is not a directory; pass a pretraining "
                        "workdir or its export/ folder")  # fmt: skip
    protocols = tuple(config.protocols)
    if not protocols:
        raise UserError(f"config.protocols is empty; use any of {', '.join(PROTOCOLS)}")
    for p in protocols:
        if p not in PROTOCOLS:
            raise UserError(f"unknown protocol {p!r}; use any of {', '.join(PROTOCOLS)}")
    if not config.eval_batch_size > 0:
        raise UserError(f"eval_batch_size={config.eval_batch_size} must be > 0")
    if config.image_size < 0:
        raise UserError(f"image_size={config.image_size} must be >= 0 (0: the encoder's own)")
    if not 0 < config.frozen_features.holdout_fraction < 1:
        raise UserError(f"frozen_features.holdout_fraction="
                        f"{config.frozen_features.holdout_fraction} must be in (0, 1)")  # fmt: skip
    if not (config.frozen_features.l2_grid and min(config.frozen_features.l2_grid) >= 0):
        raise UserError("frozen_features.l2_grid must be a non-empty list of values >= 0")
    if "augmented" in protocols:
        validate(config.augmented)  # the training run's keys, before any feature is computed
    shots = tuple(config.fewshot.shots)
    if not shots or min(shots) < 1 or config.fewshot.draws < 1:
        raise UserError("fewshot.shots must be positive integers and fewshot.draws >= 1")
    return config
