"""CPU train-step experiments: model and step variants of the SimCLR step, timed interleaved.

Each variant is the trainer's own step (ssl_jax.train.build_training with the SimCLR config, as
benchmarks/throughput.py builds it) with one change that the model or the step controls; the
backbone variants replace ssl_jax.models.build_backbone by a copy of ssl_jax.models.resnet.ResNet
(same architecture, parameter names and initialisers) with one switch flipped. Nothing in
ssl_jax/ is edited: the patch lives only in this process.

All variants of one run live in one process, so they share the XLA flags (set XLA_FLAGS before
starting; the default here is the empty YNN form, every YNN fusion off, with
SSL_JAX_CPU_XLA_FLAGS=off). After compiling them all, the timed steps go round-robin (one step of
each variant in turn, `--rounds` times after `--warmup` rounds), so load from other processes on
a shared host falls on every variant alike; the report is the median step per variant and its
ratio to the baseline of the same run.

    python benchmarks/experiments/cpu_step_variants.py --model r18 --batch 64 \\
        --variants baseline,bn_folded,bn_vjp,conv1x1_dot --rounds 5

`--block_hlo --variants baseline,bn_vjp,conv1x1_dot` compiles (never runs) one residual block's
gradient per variant and counts XLA's layout copies (seconds; see hlo_stats); `--hlo_stats` does
the same for the whole train step.

`--flag_variant FLAGS` instead compares XLA flag sets: the baseline in alternating processes,
one with the default empty form and one with FLAGS appended.

Variants:
  baseline          flax nn.Conv + nn.BatchNorm, as ssl_jax.models.resnet
  bn_folded         BatchNorm from one pass of sums (mean, mean of squares, float32) applied as
                    one per-channel affine y = x * a + b; autodiff backward
  bn_vjp            bn_folded with a hand-written backward (jax.custom_vjp): two channel sums of
                    dy and dy * x, then dx = a * dy + k * x + c in one elementwise pass
  conv1x1_dot       1x1 convolutions (shortcut projections; ResNet-50's bottleneck 1x1s) as a
                    dot_general over channels (strided ones subsample first)
  remat_nothing     every block under nn.remat(policy=nothing_saveable)
  remat_dots        every block under nn.remat(policy=dots_saveable) (convs count as dots)
  prec_bf16         the step traced under jax.default_matmul_precision("bfloat16")
  act_barrier       jax.lax.optimization_barrier on each BN+ReLU output, so XLA cannot fuse
                    (and recompute) BN+ReLU into the transposes of the weight-gradient convs
  conv3x3_vjp       3x3 convolutions with a hand-written weight gradient: nine shifted
                    [C_in, N*H*W] x [N*H*W, C_out] dots on the NHWC activations instead of the
                    transposed weight-gradient convolution
"""

import argparse
import contextlib
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("SSL_JAX_CPU_XLA_FLAGS", "off")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import throughput  # noqa: E402
from ssl_jax import models, parallel, train  # noqa: E402
from ssl_jax.models import resnet  # noqa: E402

# ------------------------------------------------------------------------------ BatchNorm


def _bn_stats(x):
    """Channel mean and (biased) variance over every axis but the last, in one pass of sums."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    mean_sq = jnp.mean(jnp.square(x32), axes)
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


def _bn_folded(x, scale, bias, eps):
    mean, var = _bn_stats(x)
    a = scale * jax.lax.rsqrt(var + eps)
    b = bias - mean * a
    return (x * a.astype(x.dtype) + b.astype(x.dtype)), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_vjp(x, scale, bias, eps):
    return _bn_folded(x, scale, bias, eps)


def _bn_vjp_fwd(x, scale, bias, eps):
    y, mean, var = _bn_folded(x, scale, bias, eps)
    return (y, mean, var), (x, scale, mean, var)


def _bn_vjp_bwd(eps, res, cotangents):
    x, scale, mean, var = res
    dy = cotangents[0]  # mean and var only feed the running averages: no gradient
    axes = tuple(range(x.ndim - 1))
    m = x.size // x.shape[-1]
    inv = jax.lax.rsqrt(var + eps)
    dy32 = dy.astype(jnp.float32)
    sum_dy = jnp.sum(dy32, axes)
    sum_dy_x = jnp.sum(dy32 * x.astype(jnp.float32), axes)
    d_bias = sum_dy
    d_scale = inv * (sum_dy_x - mean * sum_dy)  # sum(dy * x_hat)
    a = scale * inv
    k = -a * inv * d_scale / m
    c = -a * d_bias / m - k * mean
    dx = dy * a.astype(dy.dtype) + x * k.astype(x.dtype) + c.astype(x.dtype)
    return dx, d_scale, d_bias


_bn_vjp.defvjp(_bn_vjp_fwd, _bn_vjp_bwd)


class FoldedBatchNorm(nn.Module):
    """nn.BatchNorm's parameters, statistics and update rule; the math of bn_folded/bn_vjp."""

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    scale_init: callable = nn.initializers.ones
    custom_vjp: bool = False

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(features, jnp.float32))
        x = x.astype(self.dtype)
        if self.use_running_average:
            a = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
            b = bias - ra_mean.value * a
            return x * a.astype(x.dtype) + b.astype(x.dtype)
        fn = _bn_vjp if self.custom_vjp else _bn_folded
        y, mean, var = fn(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            mean, var = jax.lax.stop_gradient((mean, var))
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


# ------------------------------------------------------------------------------ convolutions


class Conv1x1Dot(nn.Module):
    """nn.Conv(features, (1, 1), strides, use_bias=False) as a dot over channels."""

    features: int
    kernel_size: tuple = (1, 1)
    strides: tuple = (1, 1)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features)
        )
        sh, sw = self.strides
        if sh > 1 or sw > 1:
            x = x[:, ::sh, ::sw, :]
        x = x.astype(self.dtype)
        return jax.lax.dot_general(x, kernel[0, 0].astype(self.dtype), (((3,), (0,)), ((), ())))


def _conv3x3(x, kernel, stride):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3x3_vjp(x, kernel, stride):
    return _conv3x3(x, kernel, stride)


def _conv3x3_vjp_fwd(x, kernel, stride):
    return _conv3x3(x, kernel, stride), (x, kernel)


def _conv3x3_vjp_bwd(stride, res, dy):
    x, kernel = res
    # Input gradient: autodiff's own (a transposed convolution) through jax.vjp of the forward.
    _, vjp_x = jax.vjp(lambda x_: _conv3x3(x_, kernel, stride), x)
    (dx,) = vjp_x(dy)
    # Weight gradient: for each tap (i, j), the input window that tap saw for every output
    # position, contracted with dy over batch and space, without transposing the activations.
    n, h, w, c_in = x.shape
    _, ho, wo, c_out = dy.shape
    # SAME padding of a 3x3 window at this stride (as lax computes it).
    pad_h = max((ho - 1) * stride + 3 - h, 0)
    pad_w = max((wo - 1) * stride + 3 - w, 0)
    xp = jnp.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    taps = []
    for i in range(3):
        row = []
        for j in range(3):
            window = jax.lax.slice(
                xp,
                (0, i, j, 0),
                (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c_in),
                (1, stride, stride, 1),
            )  # [N, Ho, Wo, C_in]
            row.append(
                jax.lax.dot_general(window, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
            )  # [C_in, C_out]
        taps.append(jnp.stack(row))
    return dx, jnp.stack(taps).astype(kernel.dtype)


_conv3x3_vjp.defvjp(_conv3x3_vjp_fwd, _conv3x3_vjp_bwd)


class Conv3x3Vjp(nn.Module):
    features: int
    kernel_size: tuple = (3, 3)
    strides: tuple = (1, 1)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
        )
        return _conv3x3_vjp(x.astype(self.dtype), kernel.astype(self.dtype), self.strides[0])


# ------------------------------------------------------------------------------ the backbone


def _relu_out(x, barrier: bool):
    y = nn.relu(x)
    return jax.lax.optimization_barrier(y) if barrier else y


class VBasicBlock(nn.Module):
    filters: int
    strides: int
    conv: type
    norm: type
    barrier: bool = False

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides), name="conv1")(x)
        y = _relu_out(self.norm(name="bn1")(y), self.barrier)
        y = self.conv(self.filters, (3, 3), name="conv2")(y)
        y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="proj")(x)
            residual = self.norm(name="bn_proj")(residual)
        return _relu_out(residual + y, self.barrier)


class VBottleneck(nn.Module):
    filters: int
    strides: int
    conv: type
    norm: type
    barrier: bool = False

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (1, 1), name="conv1")(x)
        y = _relu_out(self.norm(name="bn1")(y), self.barrier)
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides), name="conv2")(y)
        y = _relu_out(self.norm(name="bn2")(y), self.barrier)
        y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
        y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(
                4 * self.filters, (1, 1), (self.strides, self.strides), name="proj"
            )(x)
            residual = self.norm(name="bn_proj")(residual)
        return _relu_out(residual + y, self.barrier)


def _make_conv(conv_kind: str, dtype):
    flax_conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, padding="SAME")

    def conv(features, kernel_size, strides=(1, 1), name=None):
        if conv_kind in ("conv1x1_dot",) and tuple(kernel_size) == (1, 1):
            return Conv1x1Dot(features, strides=tuple(strides), dtype=dtype, name=name)
        if conv_kind == "conv3x3_vjp" and tuple(kernel_size) == (3, 3):
            return Conv3x3Vjp(features, strides=tuple(strides), dtype=dtype, name=name)
        return flax_conv(features, kernel_size, strides, name=name)

    return conv


class VariantResNet(nn.Module):
    """ssl_jax.models.resnet.ResNet with the experiment switches."""

    depth: int = 50
    width: float = 1.0
    cifar_stem: bool = False
    dtype: jnp.dtype = jnp.float32
    bn: str = "flax"  # flax | folded | vjp
    conv: str = "flax"  # flax | conv1x1_dot | conv3x3_vjp
    remat_policy: str | None = None  # None | nothing_saveable | dots_saveable
    barrier: bool = False

    @property
    def feature_dim(self) -> int:
        expansion = 1 if self.depth in (18, 34) else 4
        return int(512 * self.width) * expansion

    @nn.compact
    def __call__(self, images, train: bool = False):
        mean = jnp.asarray(resnet.MEAN_RGB, jnp.float32) * 255.0
        std = jnp.asarray(resnet.STDDEV_RGB, jnp.float32) * 255.0
        x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)

        conv = _make_conv(self.conv, self.dtype)
        if self.bn == "flax":
            norm = functools.partial(
                nn.BatchNorm,
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
            )
        else:
            norm = functools.partial(
                FoldedBatchNorm,
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                custom_vjp=self.bn == "vjp",
            )
        block = VBasicBlock if self.depth in (18, 34) else VBottleneck
        if self.remat_policy:
            block = nn.remat(block, policy=getattr(jax.checkpoint_policies, self.remat_policy))
        base = int(64 * self.width)

        if self.cifar_stem:
            x = conv(base, (3, 3), name="conv_init")(x)
            x = _relu_out(norm(name="bn_init")(x), self.barrier)
        else:
            x = conv(base, (7, 7), (2, 2), name="conv_init")(x)
            x = _relu_out(norm(name="bn_init")(x), self.barrier)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")

        for stage, num_blocks in enumerate(resnet.STAGE_SIZES[self.depth]):
            for b in range(num_blocks):
                strides = 2 if stage > 0 and b == 0 else 1
                x = block(
                    base * 2**stage,
                    strides,
                    conv,
                    norm,
                    self.barrier,
                    name=f"stage{stage + 1}_block{b + 1}",
                )(x)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


VARIANTS = {
    "baseline": dict(),
    "variant_model_baseline": dict(model={}),  # VariantResNet with no switch: checks the copy
    "bn_folded": dict(model=dict(bn="folded")),
    "bn_vjp": dict(model=dict(bn="vjp")),
    "conv1x1_dot": dict(model=dict(conv="conv1x1_dot")),
    "conv3x3_vjp": dict(model=dict(conv="conv3x3_vjp")),
    "remat_nothing": dict(model=dict(remat_policy="nothing_saveable")),
    "remat_dots": dict(model=dict(remat_policy="dots_saveable")),
    "act_barrier": dict(model=dict(barrier=True)),
    "prec_bf16": dict(precision="bfloat16"),
}
# Combinations: name1+name2 merges the model switches.


def _variant(name: str) -> dict:
    merged: dict = {}
    for part in name.split("+"):
        spec = VARIANTS[part]
        if "model" in spec:
            merged.setdefault("model", {}).update(spec["model"])
        if "precision" in spec:
            merged["precision"] = spec["precision"]
    return merged


@contextlib.contextmanager
def patched_backbone(model_kwargs: dict | None):
    if model_kwargs is None:
        yield
        return
    original = models.build_backbone

    def build_backbone(config):
        base = original(config)
        return VariantResNet(
            depth=base.depth,
            width=base.width,
            cifar_stem=base.cifar_stem,
            dtype=base.dtype,
            **model_kwargs,
        )

    models.build_backbone = build_backbone
    try:
        yield
    finally:
        models.build_backbone = original


def compile_variant(name: str, model: str, batch: int, width: float):
    spec = _variant(name)
    config, classes, examples = throughput._matrix_config(model, batch, width, "float32")
    mesh = parallel.make_mesh()
    steps_per_epoch = max(examples // config.batch_size, 1)
    precision = spec.get("precision")
    ctx = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
    with patched_backbone(spec.get("model")), ctx:
        training = train.build_training(
            config,
            mesh,
            num_classes=classes,
            steps_per_epoch=steps_per_epoch,
            num_steps=train.total_steps(config, steps_per_epoch),
        )
        recipes = [config.augment[r] for r in training.method.view_recipes()]
        state = training.initial_state(jax.random.PRNGKey(config.seed))
        rng = np.random.default_rng(0)
        host_batch = {
            "views": [
                rng.integers(0, 256, (batch, r.size, r.size, 3), dtype=np.uint8) for r in recipes
            ],
            "label": rng.integers(0, classes, batch, dtype=np.int32),
        }
        global_batch = parallel.to_global(host_batch, mesh)
        start = time.perf_counter()
        compiled = training.step_fn.lower(state, global_batch).compile()
        compile_s = time.perf_counter() - start
    return dict(compiled=compiled, state=state, batch=global_batch, compile_s=compile_s)


def run_interleaved(names, model, batch, width, rounds, warmup) -> dict:
    runs, failed = {}, {}
    for name in names:
        print(f"compiling {name} ...", file=sys.stderr, flush=True)
        try:
            runs[name] = compile_variant(name, model, batch, width)
        except Exception as e:  # noqa: BLE001 - report the variant, time the others
            failed[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"  {name} failed: {failed[name]['error']}", file=sys.stderr, flush=True)
            continue
        runs[name].update(times=[], cpu=[], wait=[])
    for r in range(warmup + rounds):
        for run in runs.values():
            usage = throughput.process_usage()
            start = time.perf_counter()
            run["state"], metrics = run["compiled"](run["state"], run["batch"])
            jax.block_until_ready((run["state"], metrics))
            elapsed = time.perf_counter() - start
            usage = throughput.process_usage(since=usage)
            if r >= warmup:
                run["times"].append(elapsed)
                run["cpu"].append(usage["cpu_s"])
                run["wait"].append(usage["runqueue_wait_s"])
            run["loss"] = float(metrics["loss"])
        print(
            f"round {r + 1}/{warmup + rounds}: "
            + ", ".join(
                f"{n} {run['times'][-1] if run['times'] else elapsed:.2f}s"
                for n, run in runs.items()
            ),
            file=sys.stderr,
            flush=True,
        )
    out = dict(failed)
    for name, run in runs.items():
        med = statistics.median(run["times"])
        med_cpu = statistics.median(run["cpu"])
        out[name] = dict(
            median_step_s=med,
            images_per_sec=batch / med,
            median_cpu_s=med_cpu,
            images_per_cpu_s=batch / med_cpu,
            times=run["times"],
            cpu_s=run["cpu"],
            runqueue_wait_s=run["wait"],
            compile_s=run["compile_s"],
            final_loss=run["loss"],
        )
    return out


_HLO_LINE = re.compile(
    r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\{?([\d,]*)\}?[^ ]* (\w[\w\-]*)\("
)
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "u8": 1, "s8": 1, "pred": 1}


def hlo_stats(hlo_text: str) -> dict:
    """Counts and output MiB of the entry computation's instructions by kind: convolutions,
    dots, and the layout-changing copies XLA adds around them (fusions named after a transpose
    or copy root: transpose_copy_fusion, copy_fusion, wrapped_copy, ...)."""
    stats: dict = {}
    in_entry = False
    for line in hlo_text.splitlines():
        if line and not line[0].isspace():
            in_entry = line.startswith("ENTRY")
            continue
        m = _HLO_LINE.match(line)
        if not m or not in_entry:
            continue
        name, dtype, dims, _, op = m.groups()
        if op == "fusion":
            layout = "transpose" in name or name.startswith(("copy", "wrapped_copy"))
            kind = "fusion:transpose/copy" if layout else "fusion:other"
        elif op in ("convolution", "dot", "transpose", "copy", "custom-call"):
            kind = op
        else:
            continue
        size = _DTYPE_BYTES.get(dtype, 4)
        for d in filter(None, dims.split(",")):
            size *= int(d)
        entry = stats.setdefault(kind, {"count": 0, "MiB": 0.0})
        entry["count"] += 1
        entry["MiB"] = round(entry["MiB"] + size / 2**20, 1)
    return stats


def run_hlo_stats(names, model, batch, width) -> dict:
    out = {}
    for name in names:
        run = compile_variant(name, model, batch, width)
        text = run["compiled"].as_text()
        out[name] = dict(hlo_stats(text), compile_s=run["compile_s"])
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    return out


BLOCK_CASES = {
    # name: (block, input [N, H, W, C], filters): ResNet-18 stage 1 at 32 px, batch 64 (two
    # views); ResNet-50 stage 1 at 224 px (56 x 56 after the stem), batch 16 (two views).
    "basic_64ch_32px_b128": ("basic", (128, 32, 32, 64), 64),
    "bottleneck_256ch_56px_b32": ("bottleneck", (32, 56, 56, 256), 64),
}
BLOCK_VARIANTS = {
    "baseline": ("flax", "flax"),
    "bn_vjp": ("vjp", "flax"),
    "bn_folded": ("folded", "flax"),
    "conv1x1_dot": ("flax", "conv1x1_dot"),
    "conv3x3_vjp": ("flax", "conv3x3_vjp"),
}


def block_hlo_stats(case: str, variant: str) -> dict:
    """hlo_stats of one residual block's gradient (train-mode BN), compiled, never run: how many
    layout copies and other fusions XLA plans for the block under a variant. Seconds, not
    minutes: a quick check of whether a variant removes the transposes before timing it."""
    kind, shape, filters = BLOCK_CASES[case]
    bn, conv_kind = BLOCK_VARIANTS[variant]
    conv = _make_conv(conv_kind, jnp.float32)
    if bn == "flax":
        norm = functools.partial(
            nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5
        )
    else:
        norm = functools.partial(FoldedBatchNorm, use_running_average=False, custom_vjp=bn == "vjp")
    block = (VBasicBlock if kind == "basic" else VBottleneck)(filters, 1, conv, norm)
    x = jnp.ones(shape, jnp.float32)
    variables = block.init(jax.random.PRNGKey(0), x)

    def loss(params, x):
        y, _ = block.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            mutable=["batch_stats"],
        )
        return jnp.sum(y * y)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return hlo_stats(grad.lower(variables["params"], x).compile().as_text())


def run_flag_variant(flags: str, args) -> dict:
    """Baseline in alternating processes: empty YNN form, then with `flags` appended."""
    base = "--xla_cpu_experimental_ynn_fusion_type="
    per = {"empty": [], "empty " + flags: []}
    for _ in range(args.processes):
        for key in per:
            env = dict(
                os.environ, SSL_JAX_CPU_XLA_FLAGS="off", XLA_FLAGS=key.replace("empty", base)
            )
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--model",
                args.model,
                "--batch",
                str(args.batch),
                "--width",
                str(args.width),
                "--variants",
                "baseline",
                "--rounds",
                str(args.rounds),
                "--warmup",
                str(args.warmup),
                "--json_only",
            ]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if not line:
                raise SystemExit(proc.stderr[-2000:])
            result = json.loads(line[-1])["baseline"]
            per[key] += result["times"]
            print(f"{key}: {result['times']}", file=sys.stderr, flush=True)
    return {
        key: dict(
            median_step_s=statistics.median(t),
            images_per_sec=args.batch / statistics.median(t),
            times=t,
        )
        for key, t in per.items()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("r18", "r50"), default="r18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--variants", default="baseline,bn_folded")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--flag_variant", default=None)
    parser.add_argument("--processes", type=int, default=2, help="--flag_variant: pairs")
    parser.add_argument("--json_only", action="store_true")
    parser.add_argument(
        "--block_hlo",
        action="store_true",
        help="no timing: hlo_stats of one ResNet-18 and one ResNet-50 block's gradient per "
        f"variant (--variants from {', '.join(BLOCK_VARIANTS)})",
    )
    parser.add_argument(
        "--hlo_stats",
        action="store_true",
        help="no timing: compile each variant and count convolutions, dots and the "
        "transpose/copy fusions of the optimised step (and their output MiB)",
    )
    parser.add_argument("--output", default=None, help="append the JSON result to this file")
    args = parser.parse_args(argv)
    if args.block_hlo:
        result = {
            case: {v: block_hlo_stats(case, v) for v in args.variants.split(",")}
            for case in BLOCK_CASES
        }
        args.json_only = True
    elif args.hlo_stats:
        result = run_hlo_stats(args.variants.split(","), args.model, args.batch, args.width)
        args.json_only = True
    elif args.flag_variant:
        result = run_flag_variant(args.flag_variant, args)
    else:
        names = args.variants.split(",")
        result = run_interleaved(
            names, args.model, args.batch, args.width, args.rounds, args.warmup
        )
    if not args.json_only:
        first = next(r for r in result.values() if "error" not in r)
        for name, r in result.items():
            if "error" in r:
                print(f"{args.model} b{args.batch} {name:28s} {r['error']}", file=sys.stderr)
                continue
            cpu = (
                f" | {r['images_per_cpu_s']:.2f} images/CPU-s "
                f"x{first['median_cpu_s'] / r['median_cpu_s']:.3f} "
                f"cpu {[round(t, 2) for t in r['cpu_s']]}"
                if "median_cpu_s" in r
                else ""
            )
            print(
                f"{args.model} b{args.batch} {name:28s} {r['images_per_sec']:8.2f} images/s "
                f"median {r['median_step_s']:.3f} s "
                f"x{first['median_step_s'] / r['median_step_s']:.3f} "
                f"steps {[round(t, 2) for t in r['times']]}{cpu}",
                file=sys.stderr,
            )
    record = dict(
        model=args.model,
        batch=args.batch,
        width=args.width,
        xla_flags=os.environ.get("XLA_FLAGS"),
        date=time.strftime("%Y-%m-%dT%H:%M:%S"),
        results=result,
    )
    print(json.dumps(result if args.json_only else record))
    if args.output:
        with open(args.output, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
