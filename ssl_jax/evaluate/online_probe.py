"""Online linear probe: a classifier trained beside the encoder on stop-gradient features.

It reports how linearly separable the features are while pretraining runs (solo-learn and BYOL
do the same). The features are wrapped in stop_gradient, so the probe's loss can never reach the
encoder: its gradients only update the probe's own parameters.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class ProbeHead(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, features):  # [B, D] -> [B, num_classes]
        return nn.Dense(self.num_classes, name="classifier")(features)


def probe_step(probe: ProbeHead, tx, params, opt_state, features, labels):
    """One probe update on [B, D] features (global batch) with int labels [B].

    Returns (params, opt_state, metrics); metrics are means over the global batch.
    """
    features = jax.lax.stop_gradient(features.astype(jnp.float32))

    def loss_fn(p):
        logits = probe.apply({"params": p}, features)  # [B, C]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return params, opt_state, {"probe_loss": loss, "probe_top1": accuracy}
