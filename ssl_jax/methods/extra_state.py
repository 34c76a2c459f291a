"""State that methods keep beside the parameters: an EMA target network and a FIFO queue.

Target network (BYOL, MoCo v2/v3, later DINO): the same Linen module applied with a second
parameter tree and its own BatchNorm statistics, both kept in the method's extra state:

    extra["target"] = {"params": ..., "batch_stats": ...}

After each optimiser step its parameters move towards the NEW online parameters,
theta_t <- tau * theta_t + (1 - tau) * theta_o, with tau on BYOL's cosine schedule
tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2 (Grill et al. 2020, section 3.2). As in BYOL's,
MoCo's and DINO's code the average covers parameters only: the target's BatchNorm normalises with
the global batch's statistics in its own training-mode forward pass, and its running statistics
are the ones that pass computes. The online tree may have more subtrees than the target (the
predictor); only the target's subtrees are averaged.

Queue (MoCo v2's negatives; SwAV keeps its own per-crop queue, methods/swav.py): a [K, D]
array and an int32 pointer; each step writes the GLOBAL batch's rows at the pointer (FIFO), so
the newest rows are the last batch.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import UserError


def init_target(variables, *, keep: tuple[str, ...]) -> dict:
    """The target's variables: a copy of the online `keep` subtrees (params and batch_stats)."""
    return {
        collection: {name: jax.tree.map(jnp.copy, tree[name]) for name in keep if name in tree}
        for collection, tree in (
            ("params", variables["params"]),
            ("batch_stats", variables.get("batch_stats", {})),
        )
    }


def cosine_tau(tau_base: float, step, total_steps: int, *, tau_final: float = 1.0):
    """BYOL's EMA rate at step k of K: tau_final - (tau_final - tau_base) (cos(pi k/K) + 1) / 2.

    With tau_final = tau_base the rate is constant (MoCo v2's 0.999).
    """
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
    return tau_final - (tau_final - tau_base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema(target_params, online_params, tau):
    """tau * target + (1 - tau) * online, leaf by leaf, over the target's subtrees only."""
    online = {name: online_params[name] for name in target_params}
    return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target_params, online)


def check_tau(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name}={value} must be in [0, 1] (an EMA rate)")


def init_queue(rng, size: int, dim: int) -> dict:
    """A queue of `size` random unit vectors (MoCo's initialisation) and its pointer."""
    rows = jax.random.normal(rng, (size, dim), jnp.float32)  # [K, D]
    rows = rows / jnp.linalg.norm(rows, axis=1, keepdims=True)
    return {"rows": rows, "ptr": jnp.zeros((), jnp.int32)}


def enqueue(queue: dict, rows: jax.Array) -> dict:
    """Writes `rows` [B, D] (the global batch) at the pointer; the oldest B rows are dropped."""
    size, batch = queue["rows"].shape[0], rows.shape[0]
    new = jax.lax.dynamic_update_slice(
        queue["rows"], rows.astype(queue["rows"].dtype), (queue["ptr"], 0)
    )
    return {"rows": new, "ptr": (queue["ptr"] + batch) % size}


def check_queue_size(size: int, rows_per_step: int, what: str = "the global batch") -> None:
    if size <= 0 or size % rows_per_step:
        hint = max(rows_per_step, int(np.round(size / rows_per_step)) * rows_per_step)
        raise UserError(
            f"queue_size={size} must be a positive multiple of the {rows_per_step} keys enqueued "
            f"per step ({what}), e.g. --config.queue_size={hint}"
        )
