"""Vision Transformer backbones: sizes, pools, position embeddings, specs and configs."""

import functools
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_checks as mc
from configs import dino, finetune, mocov3, simclr
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


# ------------------------------------------------ LayerScale, drop-path, frozen patches, presets

# A ViT small enough for a train step on 2 CPU cores, registered for a test only (the step
# builds its backbone from config.model.name).
TEST_VIT = ("vit_test", (32, 2, 2))


@pytest.fixture
def test_vit(monkeypatch):
    monkeypatch.setitem(models.VIT_BACKBONES, *TEST_VIT)
    return TEST_VIT[0]


@functools.cache
def layerscale_params():
    return init(tiny(layerscale_init=0.1), images())["params"]


def test_layerscale_scales_each_residual_branch():
    """Block output = h + gamma2 * MLP(LN(h)) with h = x + gamma1 * MHSA(LN(x)) (CaiT eq. 2)."""
    block = layerscale_params()["encoderblock_1"]
    assert set(block) == {"norm1", "attention", "ls1", "norm2", "mlp", "ls2"}
    for name in ("ls1", "ls2"):
        np.testing.assert_array_equal(block[name]["gamma"], np.full((32,), 0.1, np.float32))
    # Other gammas than the init, so that the check tells gamma1 from gamma2.
    rng = np.random.default_rng(1)
    params = {**block, "ls1": {"gamma": rng.normal(size=32).astype(np.float32)},
              "ls2": {"gamma": rng.normal(size=32).astype(np.float32)}}  # fmt: skip
    x = rng.normal(size=(2, 5, 32)).astype(np.float32)
    module = vit.EncoderBlock(num_heads=2, mlp_dim=128, layerscale_init=0.1)
    out, state = compiled(module)({"params": params}, x)
    inter = state["intermediates"]
    h = x + params["ls1"]["gamma"] * inter["attention"]["__call__"][0]
    expected = h + params["ls2"]["gamma"] * inter["mlp"]["__call__"][0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # Without LayerScale the same weights give x + f(x): gammas of 1.
    plain = {k: v for k, v in params.items() if not k.startswith("ls")}
    one = {"gamma": np.ones(32, np.float32)}
    ones = {**plain, "ls1": one, "ls2": one}
    np.testing.assert_allclose(
        compiled(module)({"params": ones}, x)[0],
        compiled(module.clone(layerscale_init=0.0))({"params": plain}, x)[0],
        rtol=1e-6,
        atol=1e-6,
    )


def test_drop_path_drops_whole_samples_at_the_rate_and_keeps_the_expectation():
    rate, n = 0.25, 4096
    x = jnp.ones((n, 3, 2))
    fn = jax.jit(vit.drop_path, static_argnums=1)
    out = np.asarray(fn(x, rate, jax.random.PRNGKey(0)))
    # Per sample: all of its tokens and channels dropped, or all kept and scaled by 1 / 0.75.
    per_sample = out.reshape(n, -1)
    assert np.all(per_sample == per_sample[:, :1])
    assert set(np.unique(per_sample)) == {0.0, np.float32(1 / (1 - rate))}
    dropped = np.mean(per_sample[:, 0] == 0)
    sigma = np.sqrt(rate * (1 - rate) / n)  # 0.0068
    assert abs(dropped - rate) < 4 * sigma, dropped
    assert abs(per_sample.mean() - 1.0) < 4 * sigma / (1 - rate)  # E[out] = x
    # Deterministic for a key, different for another.
    np.testing.assert_array_equal(fn(x, rate, jax.random.PRNGKey(0)), out)
    assert not np.array_equal(fn(x, rate, jax.random.PRNGKey(1)), out)


def test_drop_path_only_in_training_with_a_dropout_rng():
    """Rates linspace(0, r, depth): block 0 never drops; the last block's rate is r."""
    net = tiny(drop_path_rate=0.5)
    x = images(n=16)
    variables = init(net, x)
    assert "ls1" not in variables["params"]["encoderblock_0"]  # LayerScale off by default

    @functools.partial(jax.jit, static_argnums=(2, 3))
    def run(variables, key, train, with_rng):
        rngs = {"dropout": key} if with_rng else None
        return net.apply(variables, x, train=train, rngs=rngs, capture_intermediates=True,
                         mutable=["intermediates"])  # fmt: skip

    def blocks(out):
        feats, state = out
        inter = state["intermediates"]
        return feats, [inter[f"encoderblock_{i}"]["__call__"][0] for i in range(2)]

    key = jax.random.PRNGKey(3)
    ref, (ref0, ref1) = blocks(run(variables, key, False, False))
    for training, with_rng in ((False, True), (True, False)):  # off: no training, or no rng
        np.testing.assert_array_equal(blocks(run(variables, key, training, with_rng))[0], ref)
    feats, (b0, b1) = blocks(run(variables, key, True, True))
    np.testing.assert_allclose(b0, ref0, rtol=1e-6, atol=1e-6)  # rate 0 in the first block
    # The last block at p 0.5 per branch: a sample that lost both passes through unchanged
    # (P = 1/4; 6 of these 16), the others differ from the deterministic block's output.
    identity = np.all(np.asarray(b1) == np.asarray(b0), axis=(1, 2))  # [16]
    assert 0 < identity.sum() < 16, identity.sum()
    assert np.all(np.abs(np.asarray(b1) - np.asarray(ref1)).max(axis=(1, 2)) > 1e-4)
    np.testing.assert_array_equal(blocks(run(variables, key, True, True))[0], feats)
    assert not np.array_equal(blocks(run(variables, jax.random.PRNGKey(4), True, True))[0], feats)


def test_decay_mask_keeps_layerscale_out_of_weight_decay():
    import optax

    from ssl_jax import optim

    params = layerscale_params()
    mask = optim.flat_mask(params)
    for block in ("encoderblock_0", "encoderblock_1"):
        assert not mask[f"{block}/ls1/gamma"] and not mask[f"{block}/ls2/gamma"]
        assert mask[f"{block}/mlp/fc1/kernel"] and mask[f"{block}/attention/query/kernel"]
        assert not mask[f"{block}/mlp/fc1/bias"] and not mask[f"{block}/norm1/scale"]
    # Exactly the kernels are decayed (the embedding's included, its bias not).
    for path, decayed in mask.items():
        assert decayed == path.endswith("kernel"), path
    # In the optimiser: with zero gradients only weight decay moves parameters.
    tx = optim.make_optimizer(name="adamw", learning_rate=0.1, weight_decay=0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    flat = flax.traverse_util.flatten_dict(updates, sep="/")
    assert {k for k, u in flat.items() if np.abs(u).max() > 0} == {k for k, v in mask.items() if v}
    # A frozen path that names nothing is an error, not a silent no-op.
    frozen = optim.freeze(optax.sgd(0.1), ("encoderblock_0/ls3",))
    with pytest.raises(UserError, match="cannot freeze 'encoderblock_0/ls3'"):
        frozen.init(params)


def test_frozen_patch_embedding_stays_bit_identical(test_vit):
    """MoCo v3's --stop-grad-conv1 after a step of AdamW with weight decay 0.1: the patch
    projection is its random init; everything else moved."""
    mesh, training, state, step = mc.setup("mocov3:runlocal_vit", 1, (("model.name", test_vit),))
    assert training.method.frozen_parts() == ("backbone/embedding",)
    new_state, metrics = step(state, mc.batch(mesh))
    assert np.isfinite(float(metrics["loss"]))
    before, after = jax.device_get((state.params, new_state.params))
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(after["backbone"]["embedding"][leaf],
                                      before["backbone"]["embedding"][leaf])  # fmt: skip
    moved = {
        jax.tree_util.keystr(path): not np.array_equal(new, old)
        for (path, new), old in zip(
            jax.tree_util.tree_leaves_with_path(after), jax.tree.leaves(before), strict=True
        )
    }
    frozen = {k for k in moved if k.startswith("['backbone']['embedding']")}
    # Key biases have a zero gradient in exact arithmetic (without_key_biases, below).
    free = {k for k in moved if k not in frozen and "['key']['bias']" not in k}
    assert len(frozen) == 2 and all(moved[k] for k in free), moved
    # The momentum encoder's copy: tau * e + (1 - tau) * e stays the online one's.
    target = jax.device_get(new_state.extra["target"]["params"]["backbone"]["embedding"])
    np.testing.assert_allclose(target["kernel"], before["backbone"]["embedding"]["kernel"],
                               rtol=1e-6, atol=0)  # fmt: skip


def test_specs_record_layerscale_drop_path_and_heads(tmp_path):
    from ssl_jax import checkpoint
    from ssl_jax.methods.supervised import pretrained_spec

    config = vit_config("vit_s16", patch_size=4, num_heads=12, layerscale_init=0.1,
                        drop_path_rate=0.2)  # fmt: skip
    spec = models.architecture_spec(models.build_backbone(config))
    assert (spec["num_heads"], spec["layerscale_init"], spec["drop_path_rate"]) == (12, 0.1, 0.2)
    rebuilt = models.backbone_from_spec(json.loads(json.dumps(spec)))
    assert (rebuilt.layerscale_init, rebuilt.drop_path_rate, rebuilt.num_heads) == (0.1, 0.2, 12)
    # The config that rebuilds the parameters: drop-path is the run's to choose.
    assert models.model_config(spec) == {"name": "vit_s16", "width": 1.0, "patch_size": 4,
                                         "pool": "cls", "posemb": "learn", "num_heads": 12,
                                         "layerscale_init": 0.1}  # fmt: skip
    assert models.describe(spec) == "vit_s16 /4 h12 ls0.1"
    # Fine-tuning (configs/finetune.py) accepts another drop-path, not another architecture.
    export = tmp_path / "export"
    export.mkdir()
    (export / checkpoint.ENCODER_SPEC).write_text(json.dumps({"architecture": spec}))
    ft = finetune.get_config("runlocal")
    ft.pretrained, ft.image_size = str(tmp_path), 32
    ft.model.update(name="vit_s16", width=1.0, patch_size=4, num_heads=12, layerscale_init=0.1)
    assert pretrained_spec(ft)["architecture"] == spec  # drop_path_rate 0 here, 0.2 there
    ft.model.layerscale_init = 0.0
    with pytest.raises(UserError, match="--config.model.layerscale_init=0.1"):
        pretrained_spec(ft)
    # A LayerScale export loads alone and computes what the module does.
    net = tiny(layerscale_init=0.1, drop_path_rate=0.3)
    variables = {"params": layerscale_params()}
    small = {"architecture": models.architecture_spec(net), "image_size": 16, "feature_dim": 32}
    checkpoint.export_encoder(str(tmp_path / "ls" / "export"), spec=small, variables=variables)
    apply_fn, loaded = checkpoint.load_encoder(str(tmp_path / "ls"))
    np.testing.assert_allclose(apply_fn(loaded, images()), forward(net, variables, images())[0],
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    # ViT-only keys on a ResNet, and values out of range, are errors that say what to pass.
    resnet = simclr.get_config("runlocal")
    for key, value in (("drop_path_rate", 0.1), ("layerscale_init", 0.1), ("num_heads", 4),
                       ("frozen_patch_embedding", True)):  # fmt: skip
        bad = resnet.copy_and_resolve_references()
        bad.model[key] = value
        with pytest.raises(UserError, match=f"model.{key} applies to Vision Transformers only"):
            models.build_backbone(bad)
    with pytest.raises(UserError, match=r"drop_path_rate=1 must be in \[0, 1\)"):
        models.build_backbone(vit_config(drop_path_rate=1.0))
    with pytest.raises(UserError, match="num_heads=5 must divide vit_t16's width 192"):
        models.build_backbone(vit_config(num_heads=5))


def without_key_biases(tree):
    """The tree with the attention's key biases zeroed. A key bias shifts every logit of a
    query's row by the same q . b_k, which the softmax ignores: its gradient is 0 in exact
    arithmetic, rounding noise in float32 (~1e-10 here), and AdamW normalises that noise into
    steps of +-lr whose signs follow the summation order, so they differ between device counts."""

    def zero(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        return np.zeros_like(leaf) if names[-2:] == ["key", "bias"] else leaf

    return jax.tree_util.tree_map_with_path(zero, tree)


def test_dino_vit_eight_devices_equal_one(test_vit):
    """mc.assert_eight_devices_equal_one, key biases aside, with drop-path 0.5 on: the student's
    "dropout" key, folded from the step's, draws the same samples whatever the sharding; the
    8 px local crops resize the learned position embeddings."""
    overrides = (("model.name", test_vit), ("model.drop_path_rate", 0.5))
    one = mc.two_steps("dino:runlocal_vit", 1, overrides)
    eight = mc.two_steps("dino:runlocal_vit", 8, overrides)
    for key in one["metrics2"]:
        np.testing.assert_allclose(
            eight["metrics2"][key], one["metrics2"][key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    mc.assert_trees_close(eight["grads"], one["grads"])
    for name in ("params", "batch_stats", "opt_state", "extra"):
        mc.assert_trees_close(without_key_biases(getattr(eight["state2"], name)),
                              without_key_biases(getattr(one["state2"], name)))  # fmt: skip
    # The drop-path draws reached the loss: DINO uses no other randomness in its step, yet the
    # first step's loss changes with the state's key (the same compiled step).
    mesh, training, state, step = mc.setup("dino:runlocal_vit", 1, overrides)
    b = mc.batch(mesh, sizes=[r.size for r in training.recipes])
    rng = jax.device_put(jax.random.PRNGKey(99), state.rng.sharding)  # no recompilation
    _, metrics = step(state.replace(rng=rng), b)
    assert abs(float(metrics["loss"]) - float(one["metrics1"]["loss"])) > 1e-5


def test_dino_vit_resume_reproduces_losses(test_vit, tmp_path):
    """Killed after the step-2 checkpoint and rerun: the ViT student, its EMA teacher (no
    BatchNorm anywhere) and the centre come back, so steps 3-4 log the same losses."""
    mc.assert_resume_reproduces_losses("dino:runlocal_vit", tmp_path, **{"model.name": test_vit})


def test_vit_presets_have_the_papers_recipes():
    # MoCo v3's ViT-S/16 (CONFIG.md "ViT-Small", vits.py, moco/builder.py MoCo_ViT).
    c = mocov3.get_config("imagenet_vit")
    assert (c.optimizer, c.base_lr, c.lr_scaling) == ("adamw", 1.5e-4, "linear")
    assert c.weight_decay == 0.1
    assert (c.batch_size, c.num_epochs, c.warmup_epochs, c.temperature) == (4096, 300, 40.0, 0.2)
    assert (c.ema.tau_base, c.ema.tau_final) == (0.99, 1.0)
    assert c.projector.to_dict() == dict(hidden_dim=4096, out_dim=256, num_layers=3,
                                         last_bn=True, last_bn_scale=False)  # fmt: skip
    p = c.predictor
    assert (p.hidden_dim, p.out_dim, p.num_layers, p.last_bn, p.last_bn_scale) == (
        4096, 256, 2, True, False)  # fmt: skip
    m = c.model
    assert (m.name, m.num_heads, m.patch_size, m.posemb, m.pool) == ("vit_s16", 12, 0, "sincos2d",
                                                                     "cls")  # fmt: skip
    assert m.frozen_patch_embedding and m.drop_path_rate == 0.0 and m.layerscale_init == 0.0
    assert all(r.crop_area == (0.08, 1.0) for r in c.augment.values())
    net = models.build_backbone(c)
    assert (net.width, net.num_heads, net.patch_size, net.posemb) == (384, 12, 16, "sincos2d")
    # The ResNet presets are untouched by the variant.
    r = mocov3.get_config("imagenet")
    assert (r.model.name, r.optimizer, r.base_lr, r.temperature) == ("resnet50", "lars", 0.6, 1.0)
    assert not r.predictor.last_bn and not r.model.frozen_patch_embedding

    # DINO: ViT-S/16's student drop-path 0.1 (main_dino.py); the demo on a ViT-Ti/8 at 32 px
    # with 16 px local crops and BN in the head (what made it learn), the ViT recipe's
    # optimiser; runlocal_vit keeps the recipe's head and drop-path on 4 px patches.
    assert dino.get_config("imagenet").model.drop_path_rate == 0.1
    assert dino.get_config("demo").model.drop_path_rate == 0.0  # ResNet-18 x0.125, as before
    d = dino.get_config("demo_vit")
    assert (d.model.name, d.model.width, d.model.patch_size) == ("vit_t16", 1.0, 8)
    assert d.image_size == 32
    assert (d.model.drop_path_rate, d.optimizer, d.weight_decay_end) == (0.0, "adamw", 0.4)
    assert d.num_local_views == 2 and d.augment.local.size == 16 and d.head.use_bn
    net = models.build_backbone(d)
    assert (net.width, net.depth, net.patch_size, net.drop_path_rate) == (192, 12, 8, 0.0)
    r = dino.get_config("runlocal_vit")
    assert (r.model.patch_size, r.model.drop_path_rate, r.head.use_bn) == (4, 0.1, False)
    small = mocov3.get_config("runlocal_vit")
    assert (small.model.name, small.image_size, small.model.patch_size) == ("vit_t16", 16, 4)

    # Unknown variants, or variants a method does not offer, name the valid presets.
    valid = "imagenet, cifar10, demo, runlocal, imagenet_vit, demo_vit, runlocal_vit"
    for name in ("demo_vt", "cifar10_vit", "demo_resnet"):
        with pytest.raises(ValueError, match=f"unknown preset '{name}': use {valid}$"):
            mocov3.get_config(name)
    with pytest.raises(ValueError, match="unknown preset 'imagenet_vit': use .*, runlocal_vit$"):
        dino.get_config("imagenet_vit")  # its imagenet preset is the ViT recipe already
    with pytest.raises(ValueError, match="unknown preset 'demo_vit': use imagenet, cifar10, demo, "
                       "runlocal$"):  # fmt: skip
        simclr.get_config("demo_vit")
