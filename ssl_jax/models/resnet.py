"""ResNet v1 backbones (He et al. 2016), with a width multiplier and the CIFAR stem.

The layout follows torchvision's "v1.5" (stride on the 3x3 convolution of a bottleneck), which is
what SimCLR, BYOL and solo-learn train, and so does the padding (k // 2 on every side of a k x k
convolution, 1 around the max-pool), so the export of ssl_jax/torch_export.py computes the same
features in PyTorch. The module takes raw pixels (uint8 or float in 0..255)
and normalises them itself, so an exported encoder needs nothing but images.

Under jit with the batch sharded across devices, nn.BatchNorm's batch mean and variance are
reductions over the GLOBAL batch: this is SimCLR's cross-device ("global") BatchNorm, with no
axis_name and no pmean needed.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

# ImageNet channel statistics on the 0..1 scale; SimCLR and BYOL normalise CIFAR with them too.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)

STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    filters: int
    strides: int
    conv: Callable
    norm: type

    @nn.compact
    def __call__(self, x):  # [B, H, W, C_in] -> [B, H/s, W/s, filters]
        residual = x
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), name="conv2")(y)
        # Zero-init of the last gamma makes each block start as the identity (Goyal et al. 2017).
        y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="proj")(x)
            residual = self.norm(name="bn_proj")(residual)
        return nn.relu(residual + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50/101/152)."""

    filters: int
    strides: int
    conv: Callable
    norm: type

    @nn.compact
    def __call__(self, x):  # [B, H, W, C_in] -> [B, H/s, W/s, 4 * filters]
        residual = x
        y = nn.relu(self.norm(name="bn1")(self.conv(self.filters, (1, 1), name="conv1")(x)))
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
        y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(
                4 * self.filters, (1, 1), (self.strides, self.strides), name="proj"
            )(x)
            residual = self.norm(name="bn_proj")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """ResNet v1 encoder: pixels [B, H, W, 3] in 0..255 -> pooled features [B, D] (float32).

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      width: channel multiplier; 1.0 gives 64 stem channels and D = 512 (18/34) or 2048 (50+).
      cifar_stem: 3x3 stride-1 stem conv and no max-pool, for small images (SimCLR appendix B.9).
      dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    """

    depth: int = 50
    width: float = 1.0
    cifar_stem: bool = False
    dtype: jnp.dtype = jnp.float32

    @property
    def feature_dim(self) -> int:
        expansion = 1 if self.depth in (18, 34) else 4
        return int(512 * self.width) * expansion

    @nn.compact
    def __call__(self, images, train: bool = False):
        mean = jnp.asarray(MEAN_RGB, jnp.float32) * 255.0
        std = jnp.asarray(STDDEV_RGB, jnp.float32) * 255.0
        x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)  # [B, H, W, 3]

        conv = functools.partial(_conv, dtype=self.dtype)
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        block = BasicBlock if self.depth in (18, 34) else Bottleneck
        base = int(64 * self.width)

        if self.cifar_stem:
            x = conv(base, (3, 3), name="conv_init")(x)
            x = nn.relu(norm(name="bn_init")(x))
        else:
            x = conv(base, (7, 7), (2, 2), name="conv_init")(x)
            x = nn.relu(norm(name="bn_init")(x))
            # 1 on every side (with -inf), as torchvision's MaxPool2d(3, 2, 1).
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        for stage, num_blocks in enumerate(_stage_sizes(self.depth)):
            for b in range(num_blocks):
                strides = 2 if stage > 0 and b == 0 else 1
                x = block(
                    base * 2**stage, strides, conv, norm, name=f"stage{stage + 1}_block{b + 1}"
                )(x)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)  # [B, D], global average pool


def _conv(features: int, kernel_size, strides=(1, 1), *, name: str, dtype) -> nn.Conv:
    """A bias-free nn.Conv padded as torchvision pads: k // 2 on every side of a k x k kernel.

    "SAME" agrees at stride 1 but puts the extra row and column of a strided convolution at the
    bottom and right only ((0, 1) for 3x3, (2, 3) for 7x7 at even sizes): every strided output
    then sits half a pixel away from PyTorch's, and exported weights compute other features.
    The output sizes are the same either way.
    """
    padding = tuple((k // 2, k // 2) for k in kernel_size)
    return nn.Conv(features, kernel_size, strides, padding=padding, use_bias=False, dtype=dtype,
                   name=name)  # fmt: skip


def _stage_sizes(depth: int) -> Sequence[int]:
    if depth not in STAGE_SIZES:
        raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {depth}")
    return STAGE_SIZES[depth]
