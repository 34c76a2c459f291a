"""ResNet family shapes, stems, widths, dtypes; projection heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import simclr
from ssl_jax import models
from ssl_jax.errors import UserError


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "depth,width,dim", [(18, 0.125, 64), (34, 0.125, 64), (50, 0.125, 256), (101, 0.0625, 128)]
)
def test_feature_dims(depth, width, dim):
    net = models.ResNet(depth=depth, width=width, cifar_stem=True)
    out, _ = jax.eval_shape(
        lambda: net.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3), jnp.uint8))
    )
    assert out.shape == (2, dim) and net.feature_dim == dim


def test_full_width_resnet_parameter_counts():
    """torchvision's counts without the fc layer: 11.18M (R18) and 23.51M (R50)."""
    for depth, expected in ((18, 11_176_512), (50, 23_508_032)):
        net = models.ResNet(depth=depth)
        variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
        assert count(variables["params"]) == expected


def test_backbone_param_count_matches_torchvision():
    """torchvision's resnet18 / resnet50 without `fc`, counted from shapes (jax.eval_shape)."""
    for depth, expected in ((18, 11_176_512), (50, 23_508_032)):
        net = models.ResNet(depth=depth, width=1.0, cifar_stem=False)
        assert models.backbone_param_count(net) == expected
    net = models.ResNet(depth=18, width=1.0, cifar_stem=False)
    assert models.backbone_param_count(net, image_size=64) == 11_176_512  # any input size
    # The CIFAR stem's first conv is 3x3 instead of 7x7: 3 * 64 * (49 - 9) fewer weights.
    cifar = models.ResNet(depth=18, width=1.0, cifar_stem=True)
    assert models.backbone_param_count(cifar, image_size=32) == 11_176_512 - 3 * 64 * 40


def test_param_count_of_arrays_and_shapes():
    tree = {
        "a": jnp.zeros((3, 4)),
        "b": {"c": np.zeros(5), "d": jax.ShapeDtypeStruct((2, 3, 7), jnp.float32)},
        "e": jnp.zeros(()),  # a scalar counts once
    }
    assert models.param_count(tree) == 12 + 5 + 42 + 1
    assert models.param_count({}) == 0 and type(models.param_count(tree)) is int
    # Counting real parameters and counting their shapes agree.
    head = models.MLPHead(hidden_dim=32, out_dim=8, num_layers=2)
    params = head.init(jax.random.PRNGKey(0), jnp.ones((4, 16)))["params"]
    shapes = jax.eval_shape(head.init, jax.random.PRNGKey(0), jnp.ones((4, 16)))["params"]
    assert models.param_count(params) == models.param_count(shapes) == count(params) > 16 * 32


def test_stem_chosen_by_image_size():
    config = simclr.get_config("runlocal")
    config.image_size = 32
    assert models.build_backbone(config).cifar_stem
    config.image_size = 96
    assert not models.build_backbone(config).cifar_stem
    config.model.cifar_stem = True
    assert models.build_backbone(config).cifar_stem


def test_stems_downsample_as_designed():
    def stage1_hw(cifar_stem, size):
        net = models.ResNet(depth=18, width=0.125, cifar_stem=cifar_stem)
        x = jnp.zeros((1, size, size, 3))
        variables = net.init(jax.random.PRNGKey(0), x)
        _, state = net.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        return state["intermediates"]["stage1_block1"]["__call__"][0].shape[1]

    assert stage1_hw(True, 32) == 32  # stride-1 3x3, no pool
    assert stage1_hw(False, 64) == 16  # 7x7 stride 2, then max-pool stride 2


def test_bfloat16_compute_float32_params_and_features():
    net = models.ResNet(depth=18, width=0.125, cifar_stem=True, dtype=jnp.bfloat16)
    x = jnp.full((2, 16, 16, 3), 128, jnp.uint8)
    variables = net.init(jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert net.apply(variables, x).dtype == jnp.float32


def test_uint8_and_float_pixels_give_the_same_features():
    net = models.ResNet(depth=18, width=0.125, cifar_stem=True)
    x = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    variables = net.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(
        net.apply(variables, x), net.apply(variables, x.astype(np.float32)), rtol=1e-6
    )


def test_projection_heads():
    for layers, last_bn in ((2, False), (3, True)):
        head = models.MLPHead(hidden_dim=32, out_dim=8, num_layers=layers, last_bn=last_bn)
        variables = head.init(jax.random.PRNGKey(0), jnp.ones((4, 16)))
        dense = [k for k in variables["params"] if k.startswith("dense")]
        assert len(dense) == layers
        assert head.apply(variables, jnp.ones((4, 16))).shape == (4, 8)


def test_unknown_backbone_is_a_user_error():
    config = simclr.get_config("runlocal")
    config.model.name = "resnet19"
    with pytest.raises(UserError, match="resnet19"):
        models.build_backbone(config)
