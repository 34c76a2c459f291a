"""Training throughput: the SimCLR train step (JAX, beside PyTorch) and the input pipeline alone.

Rows of the train-step table, each built exactly as ssl_jax.train does it (create_state and
train_step from the SimCLR config, jitted over a mesh of every device with the state replicated,
the batch sharded along `data` and the state donated):

- ResNet-18 with the CIFAR stem, 32 px, batch 256 (configs/simclr.py:cifar10, model resnet18);
- ResNet-50, 224 px, batch 256 (configs/simclr.py, the ImageNet recipe).

The inputs are random uint8 views already on the device, so a row times the step alone. Beside
each JAX row, when torch is installed, benchmarks/torch_simclr.py times the same network and step
in PyTorch on the same device. The input-pipeline table times ssl_jax.data.train_batches on the
bundled demo images with the SimCLR recipe at 32 px and 224 px: compare its examples/s with the
step's images/s to see whether input or compute bounds training.

Full measurement (GPU or TPU host):

    python benchmarks/throughput.py

Quick check on a CPU (a few minutes on 2 cores; on cores shared with other work add
--torch_threads 1, or PyTorch's OpenMP threads stall each other):

    python benchmarks/throughput.py --steps 3 --warmup 1 --r18_width 0.25 --r18_batch 64 \
        --r50_batch 8 --pipeline_batches 3 --output /tmp/throughput_cpu.md

The Markdown tables are printed and written to --output (default
benchmarks/results/throughput_<platform>.md), the raw numbers beside it as .json.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import time

# torch shares the GPU with JAX in this process: without this JAX would claim 75% of the GPU
# memory at start-up and the PyTorch rows would run short of it. JAX's peak_bytes_in_use does not
# depend on it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# tf.data only feeds the input pipeline; keep its start-up chatter out of the tables.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The same TF settings as `python -m ssl_jax.main`, so the input pipeline behaves as in training.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # so `benchmarks.torch_simclr` imports however this file is run
    sys.path.insert(0, ROOT)

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import torch_simclr  # noqa: E402
from ssl_jax import data, parallel, train  # noqa: E402

CIFAR10_TRAIN_EXAMPLES = 50_000
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def simclr_config_module():
    """configs/simclr.py as a module, loaded by path (configs/ is not an installed package)."""
    path = os.path.join(ROOT, "configs", "simclr.py")
    spec = importlib.util.spec_from_file_location("simclr_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ JAX train step


def benchmark_jax_step(config, *, num_classes: int, num_examples: int, steps: int, warmup: int):
    """Times the trainer's jitted SimCLR step on random uint8 views already on the devices.

    Args:
      config: a resolved SimCLR config (model, batch_size, image_size, dtype, optimiser).
      num_classes: classes of the dataset the row stands for; the trainer then also updates its
        online linear probe inside the step (a [B, D] x [D, C] matmul, small beside the network).
      num_examples: train-split size, only for the schedule's steps per epoch.
      steps: timed steps.
      warmup: untimed steps after compilation.

    Returns:
      images_per_sec (input images, batch_size per step; each gives two views), step_ms,
      compile_s, peak_bytes (device allocator peak, None where the device does not report it),
      compiled_bytes (temp + arguments + outputs - donated aliases of the compiled step, per
      device) and the final loss.
    """
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    steps_per_epoch = max(num_examples // config.batch_size, 1)
    training = train.build_training(
        config,
        mesh,
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        num_steps=train.total_steps(config, steps_per_epoch),
    )
    recipes = [config.augment[name] for name in training.method.view_recipes()]
    state = jax.jit(training.init, out_shardings=training.state_sharding)(
        jax.random.PRNGKey(config.seed)
    )
    step_fn = training.step_fn

    # This host's rows of the global batch, put on the mesh as the trainer puts a real batch.
    rng = np.random.default_rng(jax.process_index())
    rows = config.batch_size // jax.process_count()
    host_batch = {
        "views": [rng.integers(0, 256, (rows, r.size, r.size, 3), dtype=np.uint8) for r in recipes]
    }
    if num_classes:
        host_batch["label"] = rng.integers(0, num_classes, rows, dtype=np.int32)
    batch = parallel.to_global(host_batch, mesh)

    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics) if warmup else state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start

    return {
        "images_per_sec": config.batch_size * steps / elapsed,
        "step_ms": 1000.0 * elapsed / steps,
        "compile_s": compile_s,
        "peak_bytes": _device_peak_bytes(),
        "compiled_bytes": _compiled_bytes(compiled),
        "final_loss": float(metrics["loss"]),
    }


def _device_peak_bytes() -> int | None:
    """The allocator's peak on device 0 since the process started (GPU/TPU); None on CPU."""
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def _compiled_bytes(compiled) -> int | None:
    """What XLA planned for one device: scratch + inputs + outputs, less the donated buffers."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return (
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def step_configs(args) -> list[dict]:
    """The train-step rows: name, config, dataset classes and size, and the torch settings."""
    module = simclr_config_module()
    r18 = module.get_config("cifar10")
    r18.model.name, r18.model.width, r18.batch_size = "resnet18", args.r18_width, args.r18_batch
    rows = [
        dict(
            name="ResNet-18 (CIFAR stem)",
            config=r18,
            num_classes=10,
            num_examples=CIFAR10_TRAIN_EXAMPLES,
            torch_args=dict(depth=18, cifar_stem=True),
        )
    ]
    if not args.skip_r50:
        r50 = module.get_config()  # the ImageNet recipe: ResNet-50 at 224 px
        r50.batch_size = args.r50_batch
        rows.append(
            dict(
                name="ResNet-50",
                config=r50,
                num_classes=1000,
                num_examples=IMAGENET_TRAIN_EXAMPLES,
                torch_args=dict(depth=50, cifar_stem=False),
            )
        )
    for row in rows:
        row["config"].dtype = args.dtype or row["config"].dtype
    return rows


def torch_device() -> str | None:
    """The torch device that matches JAX's: cuda beside a GPU, cpu beside the CPU, else None.

    On a TPU host, or a GPU host whose torch has no CUDA, torch could only run on the host CPU:
    that compares different hardware, and ResNet-50 at batch 256 would take hours there.
    """
    jax_platform = jax.devices()[0].platform
    if jax_platform == "cpu":
        return "cpu"
    if jax_platform == "gpu" and torch_simclr.torch.cuda.is_available():
        return "cuda"
    return None


def run_step_rows(args) -> list[dict]:
    results = []
    use_torch = not args.skip_torch and torch_simclr.torch_available()
    for row in step_configs(args):
        config = row["config"]
        print(f"timing JAX {row['name']} ...", file=sys.stderr, flush=True)
        result = {
            "model": row["name"],
            "width": config.model.width,
            "image_size": config.image_size,
            "batch_size": config.batch_size,
            "dtype": config.dtype,
            "optimizer": config.optimizer,
            "jax": benchmark_jax_step(
                config,
                num_classes=row["num_classes"],
                num_examples=row["num_examples"],
                steps=args.steps,
                warmup=args.warmup,
            ),
        }
        device = torch_device() if use_torch else None
        if use_torch and device is None:
            result["torch"] = {"error": f"no torch device matches {jax.devices()[0].platform}"}
        elif use_torch:
            print(f"timing PyTorch {row['name']} on {device} ...", file=sys.stderr, flush=True)
            try:
                result["torch"] = torch_simclr.benchmark_torch_simclr(
                    **row["torch_args"],
                    width=config.model.width,
                    image_size=config.image_size,
                    batch_size=config.batch_size,
                    steps=args.steps,
                    warmup=args.warmup,
                    device=device,
                    # NHWC is what cuDNN's fast convolution kernels want (and what XLA uses).
                    channels_last=device == "cuda",
                    amp_bf16=config.dtype == "bfloat16",
                )
            except (RuntimeError, MemoryError) as e:  # e.g. CUDA out of memory: keep the JAX row
                result["torch"] = {"error": f"failed: {str(e).splitlines()[0]}"}
            if device == "cuda":  # hand torch's cached blocks back before the next JAX row
                torch_simclr.torch.cuda.empty_cache()
        results.append(result)
    return results


# ------------------------------------------------------------------------------ input pipeline


def benchmark_pipeline(
    *, size: int, color_strength: float, blur_prob: float, batch: int, num_batches: int, warmup: int
) -> dict:
    """examples/s of train_batches (two SimCLR views each) on the bundled demo train split."""
    module = simclr_config_module()
    recipe = module.simclr_views(size=size, color_strength=color_strength, blur_prob=blur_prob)
    source = data.get_source("demo", "train")
    batches = data.train_batches(source, recipes=[recipe, recipe], global_batch=batch, seed=0)
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    elapsed = time.perf_counter() - start
    return {
        "image_size": size,
        "color_strength": color_strength,
        "blur_prob": blur_prob,
        "batch_size": batch,
        "views": 2,
        "batches": num_batches,
        "examples_per_sec": batch * num_batches / elapsed,
        "host_cpus": os.cpu_count(),
    }


def run_pipeline_rows(args) -> list[dict]:
    rows = []
    for size, color, blur in ((32, 0.5, 0.0), (224, 1.0, 0.5)):
        print(f"timing the input pipeline at {size} px ...", file=sys.stderr, flush=True)
        rows.append(
            benchmark_pipeline(
                size=size,
                color_strength=color,
                blur_prob=blur,
                batch=args.pipeline_batch,
                num_batches=args.pipeline_batches,
                warmup=args.pipeline_warmup,
            )
        )
    return rows


# ------------------------------------------------------------------------------ report


def environment() -> dict:
    device = jax.devices()[0]
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
    }
    if torch_simclr.torch_available():
        env["torch"] = torch_simclr.torch.__version__
        env["torch_threads"] = torch_simclr.torch.get_num_threads()
    return env


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def markdown(env: dict, step_rows: list[dict], pipeline_rows: list[dict], args) -> str:
    on_accelerator = env["platform"] != "cpu"
    memory_header = (
        "peak memory MiB (allocator)" if on_accelerator else "memory MiB (compiled plan)"
    )
    lines = [
        f"# SimCLR throughput on {env['device_count']} x {env['device_kind']} ({env['platform']})",
        "",
        f"{env['date']} | jax {env['jax']}, flax {env['flax']}"
        + (f", torch {env['torch']} ({env['torch_threads']} threads)" if "torch" in env else "")
        + f" | host CPUs {env['host_cpus']} | {args.steps} timed steps after {args.warmup} warmup",
        "",
    ]
    if step_rows:
        lines += [
            "## Train step (random uint8 inputs already on device; input pipeline not timed)",
            "",
            "images/s counts input images (the batch); each image gives two views, so the "
            "network sees twice as many. JAX uses LARS (the SimCLR config), PyTorch SGD.",
            "",
            f"| model | px | batch | dtype | JAX images/s | JAX step ms | compile s | "
            f"{memory_header} | torch images/s | torch step ms | JAX / torch |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in step_rows:
            j, t = r["jax"], r.get("torch")
            memory = j["peak_bytes"] if on_accelerator else j["compiled_bytes"]
            if t is None:
                torch_cells = ["-", "-", "-"]
            elif "error" in t:
                torch_cells = [t["error"][:60], "-", "-"]
            else:
                ratio = j["images_per_sec"] / t["images_per_sec"]
                torch_cells = [
                    f"{t['images_per_sec']:,.1f}",
                    f"{t['step_ms']:,.1f}",
                    f"{ratio:.2f}",
                ]
            model = r["model"] + (f" x{r['width']:g}" if r["width"] != 1 else "")
            lines.append(
                f"| {model} | {r['image_size']} | {r['batch_size']} | {r['dtype']} | "
                f"{j['images_per_sec']:,.1f} | {j['step_ms']:,.1f} | {j['compile_s']:.1f} | "
                f"{_mib(memory)} | " + " | ".join(torch_cells) + " |"
            )
        if not on_accelerator:
            lines += [
                "",
                "On CPU the memory column is XLA's plan for the compiled step "
                "(scratch + arguments + outputs - donated buffers), not a measured peak.",
            ]
        lines.append("")
    if pipeline_rows:
        lines += [
            "## Input pipeline alone (ssl_jax.data.train_batches, demo images, two views)",
            "",
            "| recipe | px | batch | examples/s | views/s | host CPUs |",
            "|---|---|---|---|---|---|",
        ]
        for p in pipeline_rows:
            recipe = f"SimCLR, colour {p['color_strength']:g}, blur {p['blur_prob']:g}"
            lines.append(
                f"| {recipe} | {p['image_size']} | {p['batch_size']} | "
                f"{p['examples_per_sec']:,.1f} | {2 * p['examples_per_sec']:,.1f} | "
                f"{p['host_cpus']} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed train steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--r18_width", type=float, default=1.0, help="ResNet-18 width multiplier")
    parser.add_argument("--r18_batch", type=int, default=256, help="ResNet-18 global batch")
    parser.add_argument("--r50_batch", type=int, default=256, help="ResNet-50 global batch")
    parser.add_argument("--skip_r50", action="store_true", help="only the ResNet-18 row")
    parser.add_argument("--skip_torch", action="store_true", help="no PyTorch comparison")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch.set_num_threads for the PyTorch rows on CPU (0: torch's default, one per "
        "core); 1 avoids OpenMP stalls when the CPU is shared with other work",
    )
    parser.add_argument("--skip_pipeline", action="store_true", help="no input-pipeline rows")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="compute dtype of every row (default: each config's own, float32 for the CIFAR "
        "ResNet-18 and bfloat16 for the ImageNet ResNet-50); torch then uses bf16 autocast",
    )
    parser.add_argument("--pipeline_batch", type=int, default=256, help="input-pipeline batch")
    parser.add_argument("--pipeline_batches", type=int, default=20, help="timed batches")
    parser.add_argument("--pipeline_warmup", type=int, default=2, help="untimed batches")
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown file (default benchmarks/results/"
        "throughput_<platform>.md); the raw numbers go beside it with a .json suffix",
    )
    args = parser.parse_args(argv)
    for name in ("steps", "r18_batch", "r50_batch", "pipeline_batch", "pipeline_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.torch_threads < 0:
        parser.error("--torch_threads must be >= 0")
    if args.warmup < 0 or args.pipeline_warmup < 0:
        parser.error("--warmup and --pipeline_warmup must be >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.torch_threads and torch_simclr.torch_available():
        torch_simclr.torch.set_num_threads(args.torch_threads)
    env = environment()
    step_rows = run_step_rows(args)
    pipeline_rows = [] if args.skip_pipeline else run_pipeline_rows(args)
    table = markdown(env, step_rows, pipeline_rows, args)
    print(table)

    output = args.output or os.path.join(
        ROOT, "benchmarks", "results", f"throughput_{env['platform']}.md"
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write(table)
    raw = {
        "environment": env,
        "args": vars(args),
        "train_step": step_rows,
        "input_pipeline": pipeline_rows,
    }
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=2)
    print(f"wrote {output} and its .json", file=sys.stderr)


if __name__ == "__main__":
    main()
