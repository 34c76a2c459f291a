"""Export to PyTorch: torchvision's names and shapes (no torch needed), and, where torch is
installed, the same features from a torchvision-layout forward pass as from ssl_jax."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint, torch_export
from ssl_jax.models import ResNet


def zeros_variables(depth, width=1.0, cifar_stem=False):
    shapes = jax.eval_shape(
        lambda: ResNet(depth=depth, width=width, cifar_stem=cifar_stem).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )
    )
    return jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)


@pytest.mark.parametrize(
    "depth, params, keys, shapes",
    [
        (18, 11_176_512, 120, {"conv1.weight": (64, 3, 7, 7),
                               "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                               "layer2.0.downsample.1.running_var": (128,),
                               "layer4.1.conv2.weight": (512, 512, 3, 3)}),
        (50, 23_508_032, 318, {"conv1.weight": (64, 3, 7, 7), "bn1.num_batches_tracked": (),
                               "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                               "layer3.5.bn2.weight": (256,),
                               "layer4.2.conv3.weight": (2048, 512, 1, 1)}),
    ],
)  # fmt: skip
def test_names_and_shapes_are_torchvision_s(depth, params, keys, shapes):
    """torchvision's resnet18/50 state_dict without fc: 120 / 318 entries (122 / 320 with fc),
    11,176,512 / 23,508,032 parameters (weights and biases; running stats are buffers)."""
    sd = torch_export.torchvision_state_dict(zeros_variables(depth))
    assert len(sd) == keys
    assert not any(k.startswith("fc.") for k in sd)
    learnable = [k for k in sd if k.endswith((".weight", ".bias"))]
    assert sum(sd[k].size for k in learnable) == params
    for key, shape in shapes.items():
        assert sd[key].shape == shape, key
    assert sd["bn1.num_batches_tracked"].dtype == np.int64


def randomised(variables, seed):
    """Every parameter and statistic random (init zeroes the last gamma of each block, which
    would hide a wrong residual branch); variances positive."""
    leaves, treedef = jax.tree.flatten_with_path(variables)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        x = rng.normal(size=leaf.shape).astype(np.float32)
        if path[-1].key == "var":
            x = rng.uniform(0.5, 2.0, size=leaf.shape).astype(np.float32)
        elif path[-1].key == "kernel":
            x *= np.sqrt(2.0 / np.prod(leaf.shape[:-1]))  # He scale: activations stay O(1)
        elif path[-1].key == "scale":
            x = 1.0 + 0.2 * x
        else:
            x *= 0.1
        out.append(x)
    return jax.tree.unflatten(treedef, out)


def torch_features(sd, images, cifar_stem):
    """torchvision's ResNet forward (v1.5 bottleneck, eval-mode BatchNorm), written with torch's
    functional ops over the exported state_dict: conv k x k pads k // 2, max-pool 3/2 pads 1."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

    def conv(name, x, stride=1):
        w = t[f"{name}.weight"]
        return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)

    def bn(name, x):
        return F.batch_norm(x, t[f"{name}.running_mean"], t[f"{name}.running_var"],
                            t[f"{name}.weight"], t[f"{name}.bias"], training=False,
                            eps=1e-5)  # fmt: skip

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    x = F.relu(bn("bn1", conv("conv1", x, stride=1 if cifar_stem else 2)))
    if not cifar_stem:
        x = F.max_pool2d(x, 3, 2, 1)
    for layer in range(1, 5):
        block = 0
        while f"layer{layer}.{block}.conv1.weight" in t:
            p = f"layer{layer}.{block}"
            stride = 2 if layer > 1 and block == 0 else 1
            bottleneck = f"{p}.conv3.weight" in t
            if bottleneck:
                y = F.relu(bn(f"{p}.bn1", conv(f"{p}.conv1", x)))
                y = F.relu(bn(f"{p}.bn2", conv(f"{p}.conv2", y, stride)))
                y = bn(f"{p}.bn3", conv(f"{p}.conv3", y))
            else:
                y = F.relu(bn(f"{p}.bn1", conv(f"{p}.conv1", x, stride)))
                y = bn(f"{p}.bn2", conv(f"{p}.conv2", y))
            if f"{p}.downsample.0.weight" in t:
                x = bn(f"{p}.downsample.1", conv(f"{p}.downsample.0", x, stride))
            x = F.relu(x + y)
            block += 1
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1).numpy()


@pytest.mark.parametrize(
    "depth, cifar_stem, size",
    [(18, False, 36), (18, False, 33), (18, True, 17), (50, False, 34)],
)
def test_pytorch_features_equal_ssl_jax_s(depth, cifar_stem, size):
    pytest.importorskip("torch")
    module = ResNet(depth=depth, width=0.125, cifar_stem=cifar_stem)
    variables = randomised(
        module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False), seed=depth
    )
    images = np.random.default_rng(1).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    expected = np.asarray(module.apply(variables, images, train=False))
    got = torch_features(torch_export.torchvision_state_dict(variables), images, cifar_stem)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_command_converts_an_export_and_names_its_architecture(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    arch = {"depth": 18, "width": 0.125, "cifar_stem": True, "dtype": "float32"}
    variables = ResNet(**arch).init(jax.random.key(3), jnp.zeros((1, 16, 16, 3)), train=False)
    spec = {"architecture": arch, "image_size": 16, "feature_dim": 64, "method": "byol", "step": 2}
    export = str(tmp_path / "run" / "export")
    checkpoint.export_encoder(export, spec=spec, variables=variables)

    torch_export.main([str(tmp_path / "run")])  # the workdir: its export/ is found
    path = os.path.join(export, torch_export.TORCHVISION_FILE)
    assert f"Wrote {path}" in capsys.readouterr().out
    loaded = load_file(path)
    expected = torch_export.torchvision_state_dict(variables)
    assert sorted(loaded) == sorted(expected)
    key = "layer3.0.conv1.weight"
    np.testing.assert_array_equal(loaded[key], expected[key])
    with safe_open(path, "np") as f:
        assert json.loads(f.metadata()["ssl_jax_encoder"])["architecture"] == arch

    with pytest.raises(SystemExit) as e:
        torch_export.main([str(tmp_path / "nothing_here")])
    assert e.value.code == 2
    assert "holds no exported encoder" in capsys.readouterr().err
