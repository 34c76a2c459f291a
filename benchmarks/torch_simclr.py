"""PyTorch reference for the SimCLR training-step speed comparison.

A plain-torch (no torchvision) SimCLR train step: ResNet v1.5 backbone, projection MLP, NT-Xent
over both views and SGD with momentum. It measures what the JAX trainer's step is compared with,
so it does the same work per step:

- backbone: torchvision-style ResNet v1.5 (BasicBlock for 18/34, Bottleneck for 50/101/152, the
  stride on the bottleneck's 3x3 conv), BatchNorm, a width multiplier on every layer including the
  stem, and the CIFAR stem option (3x3 stride-1 conv, no max-pool);
- projection head: Linear(F, F) - BN - ReLU - Linear(F, 128), F the backbone feature dimension;
- loss: NT-Xent (Chen et al. 2020, Eq. 1) over the 2B views, 2B - 2 negatives per anchor,
  temperature 0.1, mean over the 2B anchors;
- optimiser: SGD, momentum 0.9, weight decay 1e-6. SimCLR uses LARS, which torch does not ship;
  the per-layer trust ratio costs a few elementwise ops per parameter, negligible next to the
  convolutions, so SGD is a fair stand-in for a speed comparison.

Both views of a batch go through the backbone as one [2B, ...] batch, so BatchNorm statistics
cover both views, as with SimCLR's global BN on one device. The input is a fixed pair of random
tensors already on the device: data loading and augmentation are not timed.

Run (prints one JSON line; by default ResNet-18, CIFAR stem, width 1, 32 px, batch 256):

    python benchmarks/torch_simclr.py [--depth 50 --image_size 224 --batch_size 16] \
        [--steps 10] [--warmup 2] [--threads 1] [--device cuda] [--amp_bf16]
"""

import argparse
import json
import os
import resource
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # the JAX library and its tests must not need torch
    torch = None
    F = None
    nn = None

# Module classes are defined even without torch so that this file always imports; they are only
# instantiated after benchmark_torch_simclr has checked torch_available().
_Module = nn.Module if nn is not None else object

_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def torch_available() -> bool:
    """Whether torch can be imported in this environment."""
    return torch is not None


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int) -> list:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


class _Shortcut(_Module):
    """Identity, or a 1x1 strided projection + BN when the shape changes (ResNet option B)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if stride == 1 and in_ch == out_ch:
            self.proj = nn.Identity()
        else:
            self.proj = nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))

    def forward(self, x):
        return self.proj(x)


class BasicBlock(_Module):
    """Two 3x3 convs (ResNet-18/34); the first one carries the stride."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(in_ch, ch, 3, stride), nn.ReLU(inplace=True), *_conv_bn(ch, ch, 3, 1)
        )
        self.shortcut = _Shortcut(in_ch, ch, stride)

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(_Module):
    """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int):
        super().__init__()
        out_ch = ch * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(in_ch, ch, 1, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(ch, ch, 3, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(ch, out_ch, 1, 1),
        )
        self.shortcut = _Shortcut(in_ch, out_ch, stride)

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet(_Module):
    """ResNet v1.5 trunk to globally pooled features [B, 512 * width * expansion]."""

    def __init__(
        self, depth: int, width: float = 1.0, cifar_stem: bool = False, zero_init_residual=False
    ):
        super().__init__()
        if depth not in _STAGES:
            raise ValueError(f"depth must be one of {sorted(_STAGES)}, got {depth}")
        kind, blocks_per_stage = _STAGES[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        stem_ch = int(64 * width)
        if cifar_stem:
            stem = [*_conv_bn(3, stem_ch, 3, 1), nn.ReLU(inplace=True)]
        else:
            stem = [
                *_conv_bn(3, stem_ch, 7, 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
        layers, in_ch = list(stem), stem_ch
        for stage, num_blocks in enumerate(blocks_per_stage):
            ch = int(64 * width) * 2**stage
            for i in range(num_blocks):
                layers.append(block(in_ch, ch, 2 if (i == 0 and stage > 0) else 1))
                in_ch = ch * block.expansion
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = in_ch

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each block then starts as the identity, which helps large-batch training (Goyal et
            # al. 2017); the last BN of a block's body is the one before the residual sum.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.body[-1].weight)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.trunk(x), 1), 1)  # [B, F]


class SimCLRModel(_Module):
    """Backbone plus the SimCLR projection MLP: Linear(F, F) - BN - ReLU - Linear(F, 128)."""

    def __init__(self, backbone: "ResNet", out_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        feat = backbone.feature_dim
        self.projector = nn.Sequential(
            nn.Linear(feat, feat, bias=False),
            nn.BatchNorm1d(feat),
            nn.ReLU(inplace=True),
            nn.Linear(feat, out_dim),
        )

    def forward(self, x):
        return self.projector(self.backbone(x))  # [B, 128]


def nt_xent(z_a, z_b, temperature: float = 0.1):
    """NT-Xent over 2N views: each anchor's positive is its other view, 2N - 2 negatives; mean."""
    n = z_a.shape[0]
    u = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)  # [2N, D]
    logits = u @ u.T / temperature  # [2N, 2N]
    # An anchor is never its own negative.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(u.device)  # [2N]
    return F.cross_entropy(logits, targets)  # mean over the 2N anchors


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is the process's resident-set peak since it started: kilobytes on Linux, bytes
    # on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def process_usage(since: dict | None = None) -> dict:
    """CPU time and run-queue wait (Linux schedstat) of this process's threads, or the change
    since `since` (the same measure as benchmarks/throughput.py's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    now = {"cpu_s": usage.ru_utime + usage.ru_stime, "runqueue_wait_s": None}
    try:
        wait_ns = 0
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                wait_ns += int(f.read().split()[1])
        now["runqueue_wait_s"] = wait_ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    if since is None:
        return now
    return {
        key: None if now[key] is None or since[key] is None else now[key] - since[key]
        for key in now
    }


def benchmark_torch_simclr(
    depth: int,
    width: float,
    image_size: int,
    batch_size: int,
    cifar_stem: bool,
    steps: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    channels_last: bool = False,
    amp_bf16: bool = False,
) -> dict:
    """Times the SimCLR train step in PyTorch on synthetic inputs.

    Args:
      depth: ResNet depth (18, 34, 50, 101 or 152).
      width: width multiplier of every layer, stem included (SimCLR's 1x, 2x, 4x).
      image_size: side of the square input views.
      batch_size: images per step; each image gives two views, so the network sees 2 *
        batch_size views per step.
      cifar_stem: 3x3 stride-1 stem without max-pool instead of the 7x7 stride-2 stem + pool.
      steps: timed steps.
      warmup: untimed steps first (cuDNN autotuning, allocator warm-up).
      device: torch device string, e.g. "cpu" or "cuda".
      channels_last: NHWC memory format for the model and inputs.
      amp_bf16: run forward and loss under torch.autocast with bfloat16.

    Returns:
      A dict with images_per_sec (input images, i.e. batch_size per step, not views), step_ms
      (mean wall time of one step), peak_memory_mb (torch.cuda.max_memory_allocated on GPU;
      on CPU the process's resident-set peak, which includes everything the process did before),
      torch_version, num_threads, device, final_loss and the settings.

    Raises:
      ImportError: torch is not installed.
    """
    if not torch_available():
        raise ImportError(
            "benchmark_torch_simclr needs PyTorch, which is not a dependency of ssl_jax; install "
            "it separately (e.g. `pip install torch`) to run the PyTorch reference benchmark."
        )
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    model = SimCLRModel(ResNet(depth, width, cifar_stem, zero_init_residual=True))
    model = model.to(dev, memory_format=memory_format).train()
    lr = 0.3 * batch_size / 256  # SimCLR's linear scaling; irrelevant to speed
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-6)
    # One tensor of both views: [2B, 3, H, W], first half view 1, second half view 2.
    views = torch.rand(2 * batch_size, 3, image_size, image_size, device=dev)
    views = views.contiguous(memory_format=memory_format)

    def step():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp_bf16):
            z = model(views)  # [2B, 128]
            loss = nt_xent(z[:batch_size], z[batch_size:], temperature=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    usage = process_usage()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - start
    usage = process_usage(since=usage)

    return {
        "images_per_sec": batch_size * steps / elapsed,
        "step_ms": 1000.0 * elapsed / steps,
        "peak_memory_mb": _peak_memory_mb(dev),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "device": str(dev),
        "final_loss": float(loss),
        # CPU seconds of all threads over the timed steps, and their run-queue wait (shared host)
        "cpu_s": usage["cpu_s"],
        "runqueue_wait_s": usage["runqueue_wait_s"],
        "depth": depth,
        "width": width,
        "image_size": image_size,
        "batch_size": batch_size,
        "cifar_stem": cifar_stem,
        "steps": steps,
        "warmup": warmup,
        "channels_last": channels_last,
        "amp_bf16": amp_bf16,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=18, choices=sorted(_STAGES))
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument(
        "--cifar_stem",
        type=int,
        choices=(0, 1),
        default=None,
        help="1: CIFAR stem, 0: ImageNet stem (default: CIFAR stem at 64 px and below)",
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)"
    )
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--amp_bf16", action="store_true")
    args = parser.parse_args(argv)
    if not torch_available():
        raise SystemExit("torch_simclr.py needs PyTorch: pip install torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    cifar_stem = args.image_size <= 64 if args.cifar_stem is None else bool(args.cifar_stem)
    result = benchmark_torch_simclr(
        depth=args.depth,
        width=args.width,
        image_size=args.image_size,
        batch_size=args.batch_size,
        cifar_stem=cifar_stem,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        channels_last=args.channels_last,
        amp_bf16=args.amp_bf16,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
