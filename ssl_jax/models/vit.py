"""Vision Transformer backbones (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

Same contract as ssl_jax/models/resnet.py's ResNet: raw pixels [B, H, W, 3] (uint8 or float in
0..255) in, normalised inside with the same ImageNet statistics, float32 features [B, D] out,
`feature_dim` and `dtype` (compute dtype; parameters stay float32). No classification head.

Architecture, as the paper's equation 1 and timm's `VisionTransformer` (which MoCo v3's vits.py
subclasses and DINO's vision_transformer.py follows):
- patch embedding: a conv with kernel = stride = patch (timm's PatchEmbed, big_vision's
  `embedding`);
- a class token prepended to the patch tokens;
- position embeddings over all N + 1 tokens, class token included (paper eq. 1, timm, DINO's
  vision_transformer.py). big_vision's models/vit.py adds them to the N patch tokens only; with
  N + 1 the parameter counts equal timm's (tests/test_vit.py). Learned ("learn") or the fixed
  2-D sin-cos of MoCo v3 ("sincos2d", big_vision's `posemb_sincos_2d`), whose class token gets a
  zero embedding as in MoCo v3's vits.py;
- pre-norm blocks x + MHSA(LN(x)), x + MLP(LN(x)) with LayerNorm eps 1e-6 and an MLP of 4 x width
  with GELU;
- a final LayerNorm, then the class token ("cls") or the mean of the patch tokens ("mean", as
  big_vision's "gap" pool, here after the final norm; the class token is still there).

Two options of later ViT recipes, both off by default: LayerScale (Touvron et al. 2021, CaiT
section 2.1; again in DeiT III) multiplies each residual branch by a learned per-channel gamma
started at `layerscale_init`, x + gamma * f(x); drop-path (stochastic depth, Huang et al. 2016)
drops each sample's residual branch with probability rising linearly over the blocks from 0 to
`drop_path_rate` (timm and DINO: dpr = linspace(0, rate, depth)), the kept ones scaled by
1 / (1 - p). Drop-path acts only in training mode AND when the caller passes a "dropout" rng:
the train step passes one to the online (student) network only, so an EMA teacher applied
without one sees the whole network, as DINO's teacher, built with drop_path_rate 0. No dropout
or attention dropout: the SSL recipes this library follows use none.

Position embeddings follow the input: sin-cos is computed for the grid of each call, and a
learned table (created for the grid of the images `init` saw) is resized bicubically to another
grid, as DINO's `interpolate_pos_encoding` does for its 96 px local crops.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models.resnet import MEAN_RGB, STDDEV_RGB

# name -> (width, depth, num_heads): Ti, S and B of Touvron et al. 2021 (DeiT) Table 1, the sizes
# big_vision's decode_variant and timm use.
VIT_SIZES = {
    "vit_t16": (192, 12, 3),
    "vit_s16": (384, 12, 6),
    "vit_b16": (768, 12, 12),
}
POSEMBS = ("learn", "sincos2d")
POOLS = ("cls", "mean")


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Each sample's x [B, ...] zeroed with probability `rate`, the kept ones divided by
    1 - rate so the expectation is x (timm's and DINO's `drop_path`: one Bernoulli draw per
    sample, shared by all its tokens and channels)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))  # [B, 1, 1]
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> jnp.ndarray:
    """Fixed 2-D sin-cos position embeddings [h * w, width] for a row-major h x w grid.

    big_vision models/vit.py `posemb_sincos_2d`: a quarter of the channels each for sin(x w_k),
    cos(x w_k), sin(y w_k), cos(y w_k) with x the column and y the row of the patch and
    w_k = temperature ** -(k / (width / 4 - 1)), k = 0 .. width / 4 - 1. (MoCo v3's vits.py divides
    k by width / 4 instead, so its lowest frequency is slightly higher.)
    """
    if width % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {width}")
    quarter = width // 4
    y, x = jnp.mgrid[:h, :w]
    omega = 1.0 / temperature ** (jnp.arange(quarter, dtype=jnp.float32) / (quarter - 1))
    x = x.reshape(-1, 1).astype(jnp.float32) * omega[None]  # [h * w, width / 4]
    y = y.reshape(-1, 1).astype(jnp.float32) * omega[None]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


class MlpBlock(nn.Module):
    """Dense(4 x width) -> GELU -> Dense(width)."""

    hidden_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [B, L, D] -> [B, L, D]
        width = x.shape[-1]
        # xavier_uniform as big_vision and MoCo v3's ViT.
        dense = lambda features, name: nn.Dense(
            features, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype, name=name
        )
        x = dense(self.hidden_dim, "fc1")(x)
        # The exact (erf) GELU of PyTorch's nn.GELU, which timm, DINO and MoCo v3 use; flax's
        # default is the tanh approximation.
        x = nn.gelu(x, approximate=False)
        return dense(width, "fc2")(x)


class LayerScale(nn.Module):
    """x * gamma, one learned scale per channel started at `init` (CaiT's diag(lambda))."""

    init: float

    @nn.compact
    def __call__(self, x):  # [B, L, D] -> [B, L, D]
        gamma = self.param("gamma", nn.initializers.constant(self.init), (x.shape[-1],))
        return x * gamma.astype(x.dtype)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)); each branch through
    LayerScale (if `layerscale_init` > 0) and drop-path (rate `drop_path`), as timm's Block."""

    num_heads: int
    mlp_dim: int
    layerscale_init: float = 0.0
    drop_path: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):  # [B, L, D] -> [B, L, D]
        norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)

        def branch(y, i):  # the residual branch i (1: attention, 2: MLP) before the sum
            if self.layerscale_init:
                y = LayerScale(self.layerscale_init, name=f"ls{i}")(y)
            if train and self.drop_path and self.has_rng("dropout"):
                y = drop_path(y, self.drop_path, self.make_rng("dropout"))
            return y

        y = norm("norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            # flax initialises each of query/key/value/out from its [D, D] matrix: MoCo v3's
            # xavier_uniform on q, k and v separately rather than on timm's fused [D, 3D] qkv.
            kernel_init=nn.initializers.xavier_uniform(),
            # bfloat16 softmax over hundreds of tokens loses the small weights; float32 costs
            # little and changes nothing at float32.
            force_fp32_for_softmax=True,
            deterministic=True,
            name="attention",
        )(y)
        x = x + branch(y, 1)
        y = MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(norm("norm2")(x))
        return x + branch(y, 2)


class VisionTransformer(nn.Module):
    """ViT encoder: pixels [B, H, W, 3] in 0..255 -> features [B, width] (float32).

    Attributes:
      width: token dimension D (192 Ti, 384 S, 768 B); also the feature dimension.
      depth: number of transformer blocks.
      num_heads: attention heads (width must divide by it).
      patch_size: side of the square patches; H and W should divide by it (the rest is cropped
        off, as a VALID convolution does).
      posemb: "learn" (parameter initialised N(0, 0.02^2) as timm / DINO) or "sincos2d" (fixed).
      pool: "cls" (the class token) or "mean" (mean of the patch tokens after the final norm).
      layerscale_init: LayerScale's initial gamma (CaiT section 2.1: 0.1 up to depth 18, 1e-5 at
        24, 1e-6 deeper; DeiT III: 1e-4, facebookresearch/deit models_v2.py); 0: no LayerScale.
      drop_path_rate: drop-path rate of the last block (DINO's ViT-S/16: 0.1); 0: off.
      dtype: compute dtype (float32 or bfloat16); parameters stay float32.

    Parameters: `embedding` (conv), `cls` [1, 1, D], `pos_embedding` [1, N + 1, D] (learned only),
    `encoderblock_0` .. `encoderblock_{depth-1}` (norm1, attention, norm2, mlp/fc1, mlp/fc2, and
    ls1/gamma, ls2/gamma [D] with LayerScale) and `encoder_norm`. `train` turns drop-path on
    (with a "dropout" rng); without drop-path it changes nothing (no BatchNorm).
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    posemb: str = "learn"
    pool: str = "cls"
    layerscale_init: float = 0.0
    drop_path_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @property
    def feature_dim(self) -> int:
        return self.width

    @nn.compact
    def __call__(self, images, train: bool = False):
        if self.posemb not in POSEMBS:
            raise ValueError(f"posemb={self.posemb!r} must be one of {POSEMBS}")
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r} must be one of {POOLS}")
        mean = jnp.asarray(MEAN_RGB, jnp.float32) * 255.0
        std = jnp.asarray(STDDEV_RGB, jnp.float32) * 255.0
        x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)  # [B, H, W, 3]

        p = self.patch_size
        # MoCo v3's vits.py: xavier_uniform of the patch projection as a [p * p * 3, D] matrix,
        # U(+-sqrt(6 / (3 p^2 + D))); its frozen-patch recipe keeps exactly this random init.
        # (flax's xavier_uniform on a conv kernel would count the p x p window in both fans.)
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2))
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", kernel_init=init,
                    dtype=self.dtype, name="embedding")(x)  # fmt: skip
        n, h, w, d = x.shape  # [B, H/p, W/p, D]
        x = x.reshape(n, h * w, d)

        # timm's default (and MoCo v3's) initialisation of the class token.
        cls = self.param("cls", nn.initializers.normal(stddev=1e-6), (1, 1, d), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, d)), x], axis=1)
        posemb = self._position_embeddings(h, w, d)  # [1, 1 + h * w, D]
        # Kept for inspection (apply(..., mutable=["intermediates"])); free otherwise.
        self.sow("intermediates", "position_embeddings", posemb)
        x = x + posemb.astype(x.dtype)

        # timm / DINO: the drop-path rate rises linearly from 0 (first block) to the rate (last).
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)
        for i in range(self.depth):
            block = EncoderBlock(self.num_heads, 4 * d, self.layerscale_init, float(rates[i]),
                                 dtype=self.dtype, name=f"encoderblock_{i}")  # fmt: skip
            x = block(x, train=train)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)
        features = x[:, 0] if self.pool == "cls" else jnp.mean(x[:, 1:], axis=1)
        return features.astype(jnp.float32)  # [B, D]

    def _position_embeddings(self, h: int, w: int, d: int) -> jnp.ndarray:
        """[1, 1 + h * w, D] (float32): the class token's row first, then the grid row-major."""
        if self.posemb == "sincos2d":
            zeros = jnp.zeros((1, d), jnp.float32)
            return jnp.concatenate([zeros, posemb_sincos_2d(h, w, d)], axis=0)[None]
        shape = (1, 1 + h * w, d)
        if self.has_variable("params", "pos_embedding"):
            # Applied at another resolution than `init` saw: keep the stored table's shape (flax
            # checks it) and resize below.
            shape = self.get_variable("params", "pos_embedding").shape
        table = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), shape, jnp.float32)
        if shape[1] == 1 + h * w:
            return table
        side = int(round(np.sqrt(shape[1] - 1)))
        if side * side != shape[1] - 1:
            raise ValueError(
                f"pos_embedding has {shape[1] - 1} patch positions, not a square grid: cannot "
                f"resize it to {h} x {w}"
            )
        grid = table[0, 1:].reshape(side, side, d)
        # Bicubic without antialiasing, like DINO's F.interpolate(mode="bicubic"); jax's cubic
        # kernel (a = -0.5) differs slightly from PyTorch's (a = -0.75).
        grid = jax.image.resize(grid, (h, w, d), method="bicubic", antialias=False)
        return jnp.concatenate([table[:, :1], grid.reshape(1, h * w, d)], axis=1)
