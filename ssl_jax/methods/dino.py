"""DINO (Caron et al. 2021): self-distillation of an EMA teacher into the student, no labels.

Student: backbone -> DINO head (3-layer MLP with GELU, bottleneck 256, l2-normalised) -> a
weight-normalised linear layer to K outputs. Teacher: the same network, its parameters an EMA
of the student's (tau 0.996 -> 1 on a cosine), started as a copy. The teacher sees the global
crops only, the student every crop (multi-crop: `num_local_views`, one backbone pass per
resolution), and the loss (ssl_jax.losses.dino) is the cross-entropy of the student's softmax
at temperature 0.1 against the teacher's centred softmax at 0.04, over the pairs of different
crops. The centre is extra state: after each step, 0.9 x centre + 0.1 x the mean teacher output
over the GLOBAL batch (dino_center_update). Evaluated and exported: the teacher's backbone, as
DINO's own evaluation does (eval_knn.py / eval_linear.py load the teacher).

Optimiser details of the recipe live in the config and ssl_jax/optim.py: AdamW with the weight
decay on a cosine from 0.04 to 0.4 (`weight_decay_end`), each gradient tensor clipped to norm
3.0 on its own (`grad_clip_per_tensor`), and the last layer frozen in the first epoch
(`param_groups.last_layer.frozen_epochs`). Sources: facebookresearch/dino main_dino.py,
vision_transformer.py (DINOHead), utils.py.
"""

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax import losses, models
from ssl_jax.errors import UserError
from ssl_jax.methods import extra_state
from ssl_jax.methods.byol import EMATargetMethod
from ssl_jax.methods.network import backbone_by_resolution


class DINOHead(nn.Module):
    """[N, D] -> [N, bottleneck], l2-normalised: Linear-GELU x (num_layers - 1), then Linear.
    Kernels initialised truncated-normal 0.02, biases 0, as DINOHead._init_weights."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    use_bn: bool = False  # DINO: off for ViTs; its ResNet-50 runs turn it on
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        dense = functools.partial(
            nn.Dense, dtype=self.dtype, kernel_init=nn.initializers.truncated_normal(0.02)
        )
        for i in range(self.num_layers - 1):
            x = dense(self.hidden_dim, name=f"dense{i + 1}")(x)
            if self.use_bn:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                                 name=f"bn{i + 1}")(x)  # fmt: skip
            x = nn.gelu(x, approximate=False)  # PyTorch's nn.GELU: the exact erf form
        x = dense(self.bottleneck_dim, name=f"dense{self.num_layers}")(x).astype(jnp.float32)
        return losses.l2_normalize(x)


class WeightNormedLinear(nn.Module):
    """x @ (V / ||V||): DINO's last layer, weight_norm with its gain fixed at 1
    (norm_last_layer=True), so each of the K output units has a unit-norm weight vector."""

    out_dim: int

    @nn.compact
    def __call__(self, x):  # [N, bottleneck] -> [N, K]
        # PyTorch's nn.Linear default (uniform +-1/sqrt(fan_in)); only directions matter here.
        init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        v = self.param("kernel", init, (x.shape[-1], self.out_dim), jnp.float32)
        return x.astype(jnp.float32) @ losses.l2_normalize(v, axis=0)


class DINONetwork(nn.Module):
    """views -> backbone features [VB, D], logits "projections" [VB, K], bottleneck embedding."""

    backbone: nn.Module
    head: nn.Module
    last_layer: nn.Module

    def __call__(self, views, train: bool = False) -> dict:
        return self.target(views, train=train)

    def target(self, views, train: bool = False) -> dict:
        batch = views[0].shape[0]
        features = backbone_by_resolution(self.backbone, views, train)  # [VB, D]
        z = self.head(features, train=train)  # [VB, bottleneck], unit norm
        return {"features": features, "projections": self.last_layer(z), "embedding": z[:batch]}


@dataclasses.dataclass(frozen=True)
class DINO(EMATargetMethod):
    supports_multi_crop = True
    target_parts = ("backbone", "head", "last_layer")  # the whole student

    def validate(self) -> None:
        super().validate()
        c = self.config
        for key in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
            if not c[key] > 0:
                raise UserError(f"{key}={c[key]} must be > 0")
        extra_state.check_tau("center_momentum", c.center_momentum)
        if c.warmup_teacher_temperature_epochs < 0:
            raise UserError("warmup_teacher_temperature_epochs must be >= 0")

    def network(self) -> DINONetwork:
        backbone = models.build_backbone(self.config)
        h = self.config.head
        head = DINOHead(h.hidden_dim, h.bottleneck_dim, h.num_layers, h.use_bn, backbone.dtype)
        return DINONetwork(backbone, head, WeightNormedLinear(h.out_dim))

    def teacher_temperature(self, step):
        """Linear from warmup_teacher_temperature to teacher_temperature over the warm-up epochs
        (DINO's README "boost": 0.04 -> 0.07 over 30), then constant (the code's default: no
        warm-up, 0.04)."""
        c = self.config
        warmup = c.warmup_teacher_temperature_epochs * self.steps_per_epoch
        if warmup <= 0:
            return jnp.float32(c.teacher_temperature)
        progress = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)
        return c.warmup_teacher_temperature + progress * (
            c.teacher_temperature - c.warmup_teacher_temperature
        )

    def init_extra(self, variables, rng, sample_views):
        extra = super().init_extra(variables, rng, sample_views)
        return {**extra, "center": jnp.zeros((self.config.head.out_dim,), jnp.float32)}

    def loss(self, outputs, inputs):
        num_views, num_global = len(inputs.views), self.num_global_views
        batch = inputs.views[0].shape[0]
        student = outputs["projections"].reshape(num_views, batch, -1)  # [V, B, K]
        target, target_batch_stats = inputs.apply_target(
            inputs.extra["target"], inputs.views[:num_global]
        )
        teacher = target["projections"].reshape(num_global, batch, -1)  # [G, B, K]
        temperature = self.teacher_temperature(inputs.step)
        loss = losses.dino(student, teacher, inputs.extra["center"],
                           self.config.student_temperature, temperature)  # fmt: skip
        metrics = {"ema_tau": self.tau(inputs.step), "teacher_temperature": temperature}
        return loss, metrics, {"target_batch_stats": target_batch_stats, "teacher": teacher}

    def update_extra(self, extra, aux, *, params, step):
        extra = super().update_extra(extra, aux, params=params, step=step)
        center = losses.dino_center_update(
            extra["center"], aux["teacher"], self.config.center_momentum
        )
        return {**extra, "center": center}

    def encoder_variables(self, state) -> dict:
        target = state.extra["target"]
        return {"params": target["params"][self.encoder_name],
                "batch_stats": target["batch_stats"].get(self.encoder_name, {})}  # fmt: skip
