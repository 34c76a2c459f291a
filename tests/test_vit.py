"""Vision Transformer backbones: sizes, pools, position embeddings, specs and configs."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import simclr
from ssl_jax import models
from ssl_jax.errors import UserError
from ssl_jax.models import vit
from ssl_jax.models.resnet import MEAN_RGB


def tiny(**kw):
    """A ViT small enough to run on CPU in a test: 2 blocks of width 32."""
    return models.VisionTransformer(
        **{"width": 32, "depth": 2, "num_heads": 2, "patch_size": 4, **kw}
    )


def init(net, x):
    return jax.jit(net.init)(jax.random.PRNGKey(0), x)


@functools.cache
def compiled(net):
    return jax.jit(
        lambda v, x: net.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
    )


def forward(net, variables, x):
    """Features and every module's output (capture_intermediates); one jit per module."""
    out, state = compiled(net)(variables, x)
    return out, state["intermediates"]


def images(n=2, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def vit_config(name="vit_t16", image_size=32, **model):
    config = simclr.get_config("runlocal")
    config.image_size = image_size
    config.model.name = name
    config.model.width = 1.0
    for key, value in model.items():
        config.model[key] = value
    return config


def timm_count(width, depth, patch=16, tokens=197):
    """timm's VisionTransformer without `head`, from the architecture: patch conv (+ bias), class
    token, position embeddings over all tokens, per block 2 LayerNorms, q/k/v/out projections
    and the 4x MLP (all with biases), and the final LayerNorm."""
    block = 2 * 2 * width + 4 * (width * width + width) + 2 * 4 * width * width + 4 * width + width
    return (patch * patch * 3 + 1) * width + width + tokens * width + depth * block + 2 * width


def test_parameter_counts_match_timm_without_the_head():
    """timm's vit_{tiny,small,base}_patch16_224 have 5,717,416 / 22,050,664 / 86,567,656
    parameters; their heads are D * 1000 + 1000 (193,000 / 385,000 / 769,000)."""
    published = {"vit_t16": 5_717_416, "vit_s16": 22_050_664, "vit_b16": 86_567_656}
    expected = {"vit_t16": 5_524_416, "vit_s16": 21_665_664, "vit_b16": 85_798_656}
    for name, (width, depth, _) in models.VIT_BACKBONES.items():
        assert expected[name] == published[name] - (width * 1000 + 1000) == timm_count(width, depth)
        net = models.build_backbone(vit_config(name, image_size=224))
        assert models.backbone_param_count(net, image_size=224) == expected[name], name
        # Fixed sin-cos embeddings are no parameters: 197 x D fewer.
        fixed = net.clone(posemb="sincos2d")
        assert models.backbone_param_count(fixed, image_size=224) == expected[name] - 197 * width
    # ViT-Ti with 4 px patches at 32 px: an 8 x 8 grid, 65 position embeddings.
    net = models.build_backbone(vit_config("vit_t16", image_size=32, patch_size=4))
    assert models.backbone_param_count(net, image_size=32) == timm_count(192, 12, 4, 65)


def test_parameter_names_and_token_count():
    net = tiny()
    x = images(size=32)
    variables = init(net, x)
    params = variables["params"]
    assert set(variables) == {"params"}  # no BatchNorm statistics
    assert set(params) == {"embedding", "cls", "pos_embedding", "encoderblock_0",
                            "encoderblock_1", "encoder_norm"}  # fmt: skip
    assert set(params["encoderblock_0"]) == {"norm1", "attention", "norm2", "mlp"}
    assert set(params["encoderblock_0"]["mlp"]) == {"fc1", "fc2"}
    assert params["encoderblock_0"]["mlp"]["fc1"]["kernel"].shape == (32, 128)  # 4x hidden
    assert params["embedding"]["kernel"].shape == (4, 4, 3, 32)
    # 32 px in 4 px patches: 64 patch tokens and the class token.
    assert params["pos_embedding"].shape == (1, 65, 32) and params["cls"].shape == (1, 1, 32)
    _, inter = forward(net, variables, x)
    assert inter["encoderblock_0"]["__call__"][0].shape == (2, 65, 32)
    eight = jax.eval_shape(tiny(patch_size=8).init, jax.random.PRNGKey(0), x)["params"]
    assert eight["pos_embedding"].shape == (1, 17, 32)
    # Learned embeddings start as N(0, 0.02^2) (timm, DINO): 2,080 draws.
    np.testing.assert_allclose(np.std(params["pos_embedding"]), 0.02, rtol=0.1)


def test_features_for_both_pools_in_float32_and_bfloat16():
    x = images(n=3, size=16)
    variables = init(tiny(), x)  # both pools and both dtypes share one parameter tree
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    outs = {}
    for pool in ("cls", "mean"):
        net = tiny(pool=pool)
        out, inter = forward(net, variables, x)
        outs[pool] = out
        assert out.shape == (3, 32) == (3, net.feature_dim) and out.dtype == jnp.float32
        tokens = inter["encoder_norm"]["__call__"][0]  # [3, 1 + 16, 32]
        expected = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(axis=1)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
        assert np.all(np.isfinite(out)) and np.std(out) > 0.1
    # Float pixels in 0..255 are the same input as uint8.
    np.testing.assert_allclose(
        forward(tiny(), variables, x.astype(np.float32))[0], outs["cls"], rtol=1e-6
    )
    # bfloat16 compute from the same float32 parameters, float32 features.
    half_out, inter = forward(tiny(pool="mean", dtype=jnp.bfloat16), variables, x)
    assert half_out.dtype == jnp.float32
    assert inter["encoderblock_0"]["__call__"][0].dtype == jnp.bfloat16
    np.testing.assert_allclose(half_out, outs["mean"], atol=0.1)
    # The two pools read different tokens.
    assert np.abs(outs["cls"] - outs["mean"]).max() > 0.1


def test_pixels_are_normalised_as_the_resnet_does():
    """The ImageNet mean colour is the zero input: the patch embedding gives its bias (zero)."""
    net = tiny()
    mean_image = np.broadcast_to(np.asarray(MEAN_RGB) * 255.0, (1, 8, 8, 3)).astype(np.float32)
    variables = init(net, mean_image)
    _, inter = forward(net, variables, np.concatenate([mean_image, mean_image + 10.0]))
    embedded = np.asarray(inter["embedding"]["__call__"][0])
    np.testing.assert_allclose(embedded[0], 0.0, atol=1e-5)
    assert np.abs(embedded[1]).max() > 1e-2


def test_sincos_embedding_equals_its_formula():
    h, w, width, temperature = 2, 3, 8, 10_000.0
    got = np.asarray(vit.posemb_sincos_2d(h, w, width))
    assert got.shape == (h * w, width)
    quarter = width // 4
    for row in range(h):
        for col in range(w):
            for k in range(quarter):
                omega = temperature ** (-k / (quarter - 1))
                want = [np.sin(col * omega), np.cos(col * omega),
                        np.sin(row * omega), np.cos(row * omega)]  # fmt: skip
                np.testing.assert_allclose(got[row * w + col, k::quarter], want, atol=1e-6)
    # In the model: no parameter, the class token's row is zero, the patches' rows the table.
    net = tiny(posemb="sincos2d")
    x = images(size=8)
    variables = init(net, x)
    assert "pos_embedding" not in variables["params"]
    _, inter = forward(net, variables, x)
    table = inter["position_embeddings"][0]
    np.testing.assert_allclose(table[0, 0], 0.0)
    np.testing.assert_allclose(table[0, 1:], vit.posemb_sincos_2d(2, 2, 32), atol=1e-6)


def test_position_embeddings_follow_the_input_size():
    """Trained at 32 px, applied to 16 px crops (DINO's local crops): the learned 8 x 8 table is
    resized to 4 x 4 (class token row kept); sin-cos is computed for each grid."""
    net = tiny()
    variables = init(net, images(size=32))
    stored = np.asarray(variables["params"]["pos_embedding"])
    _, inter = forward(net, variables, images(size=32))
    np.testing.assert_array_equal(inter["position_embeddings"][0], stored)
    out, inter = forward(net, variables, images(size=16))
    assert out.shape == (2, 32) and np.all(np.isfinite(out))
    table = np.asarray(inter["position_embeddings"][0])
    assert table.shape == (1, 17, 32)
    np.testing.assert_array_equal(table[:, 0], stored[:, 0])
    # Sampled at half-pixel centres (PyTorch's align_corners=False, as DINO): new column j sits
    # at old column 2j + 0.5, which a cubic reproduces exactly for a ramp away from the edges.
    ramp = np.broadcast_to(np.arange(8.0)[None, :, None], (8, 8, 32)).reshape(1, 64, 32)
    ramp = np.concatenate([stored[:, :1], ramp], axis=1).astype(np.float32)
    table = forward(net, {"params": {**variables["params"], "pos_embedding": ramp}}, images())[1]
    grid = np.asarray(table["position_embeddings"][0])[0, 1:].reshape(4, 4, 32)
    np.testing.assert_allclose(grid[:, 1:3], np.broadcast_to([[2.5], [4.5]], (4, 2, 32)), atol=1e-5)

    fixed = tiny(posemb="sincos2d")
    fixed_vars = init(fixed, images(size=32))
    _, inter = forward(fixed, fixed_vars, images(size=16))
    np.testing.assert_allclose(
        inter["position_embeddings"][0][0, 1:], vit.posemb_sincos_2d(4, 4, 32), atol=1e-6
    )


def test_architecture_spec_round_trip():
    resnet = models.ResNet(depth=18, width=0.125, cifar_stem=True)
    spec = models.architecture_spec(resnet)
    # Exactly the dict exports carried before ViTs (ssl_jax/train.py finish()).
    assert spec == {"depth": 18, "width": 0.125, "cifar_stem": True, "dtype": "float32"}
    for arch in (spec, json.loads(json.dumps(spec))):
        rebuilt = models.backbone_from_spec(arch)
        assert isinstance(rebuilt, models.ResNet)
        assert models.architecture_spec(rebuilt) == spec

    net = models.build_backbone(
        vit_config("vit_s16", image_size=32, patch_size=4, pool="mean", posemb="sincos2d")
    )
    net = net.clone(dtype=jnp.bfloat16)
    spec = models.architecture_spec(net)
    assert spec == {"name": "vit", "width": 384, "depth": 12, "num_heads": 6, "patch_size": 4,
                    "posemb": "sincos2d", "pool": "mean", "dtype": "bfloat16"}  # fmt: skip
    rebuilt = models.backbone_from_spec(json.loads(json.dumps(spec)))
    assert isinstance(rebuilt, models.VisionTransformer)
    assert models.architecture_spec(rebuilt) == spec and rebuilt.dtype == jnp.bfloat16
    assert rebuilt.feature_dim == 384

    with pytest.raises(UserError, match="'swin'"):
        models.backbone_from_spec({"name": "swin", "width": 96})
    with pytest.raises(UserError, match="does not describe a vit"):
        models.backbone_from_spec({**spec, "layerscale": 0.1})


def test_build_backbone_reads_the_vit_keys():
    net = models.build_backbone(vit_config("vit_b16", image_size=224))
    assert isinstance(net, models.VisionTransformer)
    assert (net.width, net.depth, net.num_heads, net.patch_size) == (768, 12, 12, 16)
    assert (net.pool, net.posemb, net.dtype) == ("cls", "learn", jnp.float32)
    config = vit_config("vit_t16", image_size=32, patch_size=8, pool="mean", cifar_stem=True)
    config.dtype = "bfloat16"
    net = models.build_backbone(config)
    assert (net.width, net.num_heads, net.patch_size, net.pool) == (192, 3, 8, "mean")
    assert net.dtype == jnp.bfloat16 and net.feature_dim == 192


def test_build_backbone_errors():
    config = vit_config("vit_s16")
    config.model.width = 0.5
    with pytest.raises(UserError, match="model.width=1.0"):
        models.build_backbone(config)
    with pytest.raises(UserError, match="image_size=32 does not divide"):
        models.build_backbone(vit_config("vit_t16", image_size=32, patch_size=5))
    with pytest.raises(UserError, match="model.pool='gap'"):
        models.build_backbone(vit_config(pool="gap"))
    with pytest.raises(UserError, match="model.posemb='sincos'"):
        models.build_backbone(vit_config(posemb="sincos"))
    with pytest.raises(UserError, match="vit_t16, vit_s16, vit_b16"):
        models.build_backbone(vit_config("vit_l16"))
    # The image size must divide into patches of 16 by default.
    with pytest.raises(UserError, match="patch_size=16"):
        models.build_backbone(vit_config("vit_t16", image_size=32 + 8))


def test_a_vit_export_loads_alone_and_its_tokens_are_not_decayed(tmp_path):
    from ssl_jax import checkpoint, optim, torch_export

    net = tiny()
    variables = init(net, images())
    spec = {"architecture": models.architecture_spec(net), "image_size": 16, "feature_dim": 32}
    checkpoint.export_encoder(str(tmp_path / "export"), spec=spec, variables=variables)
    apply_fn, loaded = checkpoint.load_encoder(str(tmp_path))
    np.testing.assert_allclose(apply_fn(loaded, images()), forward(net, variables, images())[0],
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    # The config values that rebuild a named ViT, as fine-tuning's error message prints them.
    named = models.architecture_spec(models.build_backbone(vit_config(patch_size=4)))
    assert models.describe(named) == "vit_t16 /4"
    assert models.model_config(named) == {"name": "vit_t16", "width": 1.0, "patch_size": 4,
                                          "pool": "cls", "posemb": "learn"}  # fmt: skip
    mask = optim.flat_mask(variables["params"])
    assert not mask["cls"] and not mask["pos_embedding"] and not mask["encoder_norm/scale"]
    assert mask["embedding/kernel"] and mask["encoderblock_0/mlp/fc1/kernel"]
    with pytest.raises(SystemExit):  # only ResNets have torchvision's layout
        torch_export.main([str(tmp_path)])
