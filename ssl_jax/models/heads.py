"""MLP heads that sit on the backbone: projectors and predictors.

SimCLR v1 uses 2 layers (Linear-BN-ReLU-Linear), SimCLR v2 uses 3; BYOL/SimSiam predictors are
the same module with other sizes. BatchNorm here is global-batch BN, like the backbone's.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp


class MLPHead(nn.Module):
    """[B, D_in] -> [B, out_dim] through num_layers linear layers.

    Every layer but the last is Linear -> BatchNorm -> ReLU. The last is Linear, followed by a
    BatchNorm without a learned offset when `last_bn` is set (SimCLR v2), and without a learned
    scale either when `last_bn_scale` is off (MoCo v3, SimSiam: BN(affine=False)).
    `num_layers=1` is a single linear layer. `hidden_bn=False` gives MoCo v2's head (Linear with
    bias -> ReLU, no BatchNorm); `last_bias=False` drops the last layer's bias (Barlow Twins).
    """

    hidden_dim: int
    out_dim: int
    num_layers: int = 2
    last_bn: bool = False
    last_bn_scale: bool = True
    hidden_bn: bool = True
    last_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
        )
        for i in range(self.num_layers - 1):
            x = dense(self.hidden_dim, use_bias=not self.hidden_bn, name=f"dense{i + 1}")(x)
            x = nn.relu(norm(name=f"bn{i + 1}")(x) if self.hidden_bn else x)
        use_bias = self.last_bias and not self.last_bn
        x = dense(self.out_dim, use_bias=use_bias, name=f"dense{self.num_layers}")(x)
        if self.last_bn:
            x = norm(use_bias=False, use_scale=self.last_bn_scale, name=f"bn{self.num_layers}")(x)
        return x.astype(jnp.float32)
