"""An encoder with a linear classifier on its features: what fine-tuning trains and exports."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Classifier(nn.Module):
    """views: V x [B, H, W, 3] uint8 -> features [VB, D] and logits [VB, C]."""

    backbone: nn.Module
    num_classes: int
    frozen: bool = False  # encoder in inference mode and outside the gradient

    @nn.compact
    def __call__(self, views, train: bool = False) -> dict:
        batch = views[0].shape[0]
        images = jnp.concatenate(views, axis=0)  # [VB, H, W, 3]
        features = self.backbone(images, train=train and not self.frozen)  # [VB, D]
        if self.frozen:
            features = jax.lax.stop_gradient(features)
        # float32 logits whatever the compute dtype: the softmax and the top-k need the range.
        logits = nn.Dense(self.num_classes, name="head")(features.astype(jnp.float32))
        return {"features": features, "logits": logits, "embedding": features[:batch]}
