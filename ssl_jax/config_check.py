"""Checks on a config before any work starts, so mistakes surface as one clear line."""

import ml_collections

from ssl_jax.errors import UserError

# The keys every method's config has (a contract: tests and tools use these names).
SHARED_KEYS = (
    "method", "dataset", "data_dir", "image_size", "batch_size", "num_epochs", "total_steps",
    "optimizer", "base_lr", "lr_scaling", "weight_decay", "warmup_epochs", "seed", "dtype",
    "checkpoint_every_steps", "keep_checkpoints", "log_every_steps", "eval_every_steps",
    "model.name", "model.width",
)  # fmt: skip

_POSITIVE = ("image_size", "batch_size", "checkpoint_every_steps", "keep_checkpoints",
             "log_every_steps")  # fmt: skip
_NON_NEGATIVE = ("num_epochs", "total_steps", "warmup_epochs", "eval_every_steps",
                 "eval_batch_size", "weight_decay")  # fmt: skip


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
        if config.get(key, 0) < 0:  # eval_batch_size is newer than some configs: absent is 0
            raise UserError(f"{key}={config[key]} must be >= 0")
    if config.total_steps == 0 and config.num_epochs == 0:
        raise UserError("set num_epochs or total_steps (both are 0)")
    if not config.base_lr > 0:
        raise UserError(f"base_lr={config.base_lr} must be > 0")
    return config
