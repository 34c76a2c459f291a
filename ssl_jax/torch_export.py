"""Export a ResNet encoder to PyTorch: torchvision's parameter names and layouts, as safetensors.

    python -m ssl_jax.torch_export RUN/export            # writes RUN/export/torchvision.safetensors
    python -m ssl_jax.torch_export RUN/export --output resnet50.safetensors

Every pretraining run of a ResNet writes export/torchvision.safetensors itself; this command
converts any export. In PyTorch (ResNet-50 at width 1 and the ImageNet stem):

    model = torchvision.models.resnet50()
    model.load_state_dict(safetensors.torch.load_file(path), strict=False)  # fc is not in it
    model.fc = torch.nn.Identity()
    features = model.eval()(normalised_images)  # [N, 2048], ssl_jax's features

Conventions a user must match on the PyTorch side:
  * Inputs: torchvision models take normalised pixels, (x / 255 - mean) / std with ImageNet's
    mean and std (ssl_jax.models.resnet.MEAN_RGB / STDDEV_RGB); ssl_jax's encoder takes raw
    0..255 pixels and normalises inside.
  * CIFAR stem (`cifar_stem`, images up to 64 px): conv1 is 3x3 stride 1 and there is no max-pool,
    as in solo-learn and SimCLR's CIFAR code: set `model.conv1 = nn.Conv2d(3, 64, 3, 1, 1,
    bias=False)` and `model.maxpool = nn.Identity()` before loading.
  * Width multipliers other than 1 give torchvision's names with scaled channel counts; torchvision
    has no constructor for those, so build the model with the shapes in the file.
  * Padding: ssl_jax's ResNet pads like torchvision (k // 2 on every side of a k x k convolution,
    1 around the max-pool), so the features agree to float32 rounding (tested).
"""

import argparse
import json
import sys

import numpy as np

TORCHVISION_FILE = "torchvision.safetensors"

# ssl_jax module name inside a block -> torchvision's
_BLOCK_PARTS = {
    "conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2", "conv3": "conv3",
    "bn3": "bn3", "proj": "downsample.0", "bn_proj": "downsample.1",
}  # fmt: skip


def _torch_prefix(module_path: tuple[str, ...]) -> str:
    """('stage2_block1', 'bn_proj') -> 'layer2.0.downsample.1'; ('conv_init',) -> 'conv1'."""
    if module_path == ("conv_init",):
        return "conv1"
    if module_path == ("bn_init",):
        return "bn1"
    if len(module_path) == 2 and module_path[0].startswith("stage"):
        stage, block = module_path[0].removeprefix("stage").split("_block")
        return f"layer{stage}.{int(block) - 1}.{_BLOCK_PARTS[module_path[1]]}"
    raise ValueError(f"not a ResNet encoder module: {'/'.join(module_path)}")


def torchvision_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """ssl_jax ResNet variables ({"params", "batch_stats"}) -> torchvision's state_dict entries.

    Convolution kernels go from flax's [kh, kw, in, out] to torch's [out, in, kh, kw]; BatchNorm
    scale/bias become weight/bias, mean/var running_mean/running_var, and num_batches_tracked
    (which torchvision's state_dict carries) is 0. The classifier (fc) is absent.
    """
    out = {}
    params, stats = variables["params"], variables.get("batch_stats", {})

    def walk(tree, path):
        for name, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value, path + (name,))
            else:
                yield path, name, np.asarray(value, np.float32)

    for path, leaf, value in walk(params, ()):
        prefix = _torch_prefix(path)
        if leaf == "kernel":
            out[f"{prefix}.weight"] = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
        elif leaf == "scale":
            out[f"{prefix}.weight"] = value
        elif leaf == "bias":
            out[f"{prefix}.bias"] = value
        else:
            raise ValueError(f"unexpected parameter {'/'.join(path)}/{leaf}")
    for path, leaf, value in walk(stats, ()):
        prefix = _torch_prefix(path)
        out[f"{prefix}.running_{'mean' if leaf == 'mean' else 'var'}"] = value
        out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def export_torchvision(variables: dict, path: str, *, spec: dict | None = None) -> None:
    """Writes torchvision_state_dict(variables) to `path` (safetensors), atomically.

    `spec` (the export's encoder.json) goes into the file's metadata, so the file says which
    architecture and stem it holds.
    """
    from safetensors.numpy import save

    from ssl_jax import fileio

    metadata = {"format": "pt", "source": "ssl_jax"}
    if spec is not None:
        metadata["ssl_jax_encoder"] = json.dumps(spec, sort_keys=True)
    fileio.write_bytes(path, save(torchvision_state_dict(variables), metadata=metadata))


def main(argv=None) -> None:
    from ssl_jax.errors import UserError, exit_on_error

    parser = argparse.ArgumentParser(
        prog="python -m ssl_jax.torch_export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("export", help="a run's export/ folder (or the run's workdir)")
    parser.add_argument("--output", help=f"default: EXPORT/{TORCHVISION_FILE}")
    args = parser.parse_args(argv)
    with exit_on_error():
        from ssl_jax import checkpoint

        try:
            export, spec = checkpoint.find_export(args.export)
        except FileNotFoundError:
            raise UserError(f"{args.export} holds no exported encoder ({checkpoint.ENCODER_SPEC} "
                            "not found): pass a run's export/ folder") from None  # fmt: skip
        if spec["architecture"].get("name", "resnet") != "resnet":
            raise UserError(f"{export} holds a {spec['architecture']['name']} encoder; only "
                            "ResNets convert to torchvision's layout")  # fmt: skip
        _, variables = checkpoint.load_encoder(export)
        output = args.output or f"{export}/{TORCHVISION_FILE}"
        try:
            export_torchvision(variables, output, spec=spec)
        except OSError as e:
            raise UserError(f"cannot write {output}: {e.strerror or e}") from None
    print(f"Wrote {output}", file=sys.stdout)


if __name__ == "__main__":
    main()
