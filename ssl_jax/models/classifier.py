"""An encoder with a linear classifier on its features: what fine-tuning trains and exports.

SimCLR v2 (Chen et al. 2020b, section 2) fine-tunes "from the middle layer of the projection
head": the classifier sits on the output of the pretrained projector's first layer (Linear ->
BN -> ReLU), which is initialised from pretraining and fine-tuned with the encoder
(google-research/simclr tf2/model.py, `ft_proj_selector=1`). `ProjectorLayer` is that layer,
with the parameter names of models.MLPHead's first layer so the pretrained weights load as they
are (ssl_jax.checkpoint: export/projector_layer_1).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class ProjectorLayer(nn.Module):
    """[N, D] -> [N, width]: models.MLPHead's first layer, Dense `dense1` -> BatchNorm `bn1` ->
    ReLU; without `batch_norm` (MoCo v2's head) Dense with bias -> ReLU."""

    width: int
    batch_norm: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(self.width, use_bias=not self.batch_norm, dtype=self.dtype, name="dense1")(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                             name="bn1")(x)  # fmt: skip
        return nn.relu(x)


class Classifier(nn.Module):
    """views: V x [B, H, W, 3] uint8 -> features [VB, D] and logits [VB, C].

    With `projector` (a ProjectorLayer, named "projector" as in pretraining: finetune_from=
    projector_layer_1) the linear layer reads its output instead of the backbone's features.
    """

    backbone: nn.Module
    num_classes: int
    frozen: bool = False  # encoder in inference mode and outside the gradient
    projector: nn.Module | None = None

    @nn.compact
    def __call__(self, views, train: bool = False) -> dict:
        batch = views[0].shape[0]
        images = jnp.concatenate(views, axis=0)  # [VB, H, W, 3]
        features = self.backbone(images, train=train and not self.frozen)  # [VB, D]
        if self.frozen:
            features = jax.lax.stop_gradient(features)
        hidden = features if self.projector is None else self.projector(features, train=train)
        # float32 logits whatever the compute dtype: the softmax and the top-k need the range.
        logits = nn.Dense(self.num_classes, name="head")(hidden.astype(jnp.float32))
        return {"features": features, "logits": logits, "embedding": features[:batch]}
