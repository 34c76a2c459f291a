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
import subprocess
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

# jaxlib 0.10 on CPU hands every convolution to YNNPACK unless this flag says otherwise. The
# forms the matrix compares (XLA_FLAGS is read once, when the backend starts, so each setting
# needs its own process):
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
XLA_SETTINGS = {
    "default": "",  # jaxlib's own choice: convolutions in YNNPACK
    "-individual_convolution": f"{YNN_FLAG}=-individual_convolution",  # convs back to Eigen
    # ... and no YNN reduce fusions, whose rank-7/8 kernels crash jaxlib 0.10.2 (jax#39257, #40412)
    "-individual_convolution,-reduce": f"{YNN_FLAG}=-individual_convolution,-reduce",
    "empty": f"{YNN_FLAG}=",  # every YNN fusion off
}
MATRIX_MARK = "THROUGHPUT_MATRIX_RESULT "  # a worker's result line on stdout


def xla_setting(flags: str | None = None) -> str:
    """The YNN fusion setting in XLA_FLAGS (the last one wins, as in XLA): a key of XLA_SETTINGS,
    or the flag's value when it is some other form."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    value = None
    for token in flags.split():
        if token.startswith(YNN_FLAG + "="):
            value = token[len(YNN_FLAG) + 1 :]
    if value is None:
        return "default"
    if value == "":
        return "empty"
    return value


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
    state = training.initial_state(jax.random.PRNGKey(config.seed))
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
    usage = process_usage()
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    usage = process_usage(since=usage)

    return {
        "images_per_sec": config.batch_size * steps / elapsed,
        "step_ms": 1000.0 * elapsed / steps,
        "compile_s": compile_s,
        "peak_bytes": _device_peak_bytes(),
        "compiled_bytes": _compiled_bytes(compiled),
        "final_loss": float(metrics["loss"]),
        # CPU seconds of every thread of this process over the timed steps, and the seconds its
        # threads were runnable but waiting for a core (other processes on the host).
        "cpu_s": usage["cpu_s"],
        "runqueue_wait_s": usage["runqueue_wait_s"],
    }


# CPU seconds and run-queue wait of this process: the same accounting as the PyTorch rows.
process_usage = torch_simclr.process_usage


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
            "xla_setting": xla_setting(),
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


# ------------------------------------------------------------------------------ setting matrix
#
# --matrix: every (row, threads, XLA setting) cell in a process of its own, because XLA_FLAGS is
# read once per process. The child gets SSL_JAX_CPU_XLA_FLAGS=off (ssl_jax then leaves XLA_FLAGS
# alone) and exactly the measured flag form in XLA_FLAGS. "pinned" cells run on one core
# (`taskset -c N`): XLA's intra-op pool sizes itself from the affinity
# mask, and torch gets set_num_threads(1).

MATRIX_MODELS = {
    # name: (row label, depth, px, CIFAR stem, config preset)
    "r18": ("ResNet-18 (CIFAR stem)", 18, 32, True, "cifar10"),
    "r50": ("ResNet-50", 50, 224, False, None),
}


def _matrix_config(model: str, batch: int, width: float, dtype: str):
    label, depth, px, cifar_stem, preset = MATRIX_MODELS[model]
    config = simclr_config_module().get_config(preset)
    config.model.name, config.model.width = f"resnet{depth}", width
    config.batch_size, config.dtype = batch, dtype
    assert config.image_size == px, (config.image_size, px)
    classes, examples = (
        (10, CIFAR10_TRAIN_EXAMPLES) if model == "r18" else (1000, IMAGENET_TRAIN_EXAMPLES)
    )
    return config, classes, examples


def _xla_thread_count() -> int:
    """Threads of XLA's CPU intra-op pool (named tf_XLAEigen) in this process."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().strip().startswith("tf_XLAEigen")
        except OSError:
            pass
    return count


def matrix_worker(spec: dict) -> None:
    """One JAX cell, in this (child) process: prints MATRIX_MARK + a JSON result line."""
    config, classes, examples = _matrix_config(
        spec["model"], spec["batch"], spec["width"], spec["dtype"]
    )
    result = benchmark_jax_step(
        config,
        num_classes=classes,
        num_examples=examples,
        steps=spec["steps"],
        warmup=spec["warmup"],
    )
    result.update(
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        xla_setting=xla_setting(),
        affinity=sorted(os.sched_getaffinity(0)),
        xla_threads=_xla_thread_count(),
        jax_version=jax.__version__,
    )
    print(MATRIX_MARK + json.dumps(result), flush=True)


def _run_child(cmd: list[str], env: dict, pin: int | None, timeout: float) -> tuple[dict, float]:
    """Runs cmd (pinned to CPU `pin` if given); its last MATRIX_MARK or JSON line, and wall s."""
    if pin is not None:
        # taskset rather than a preexec_fn: this process may already run JAX's threads, and
        # Python code between fork and exec can then deadlock.
        cmd = ["taskset", "-c", str(pin), *cmd]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}, time.perf_counter() - start
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        line = line.removeprefix(MATRIX_MARK)
        if line.startswith("{"):
            return json.loads(line), wall
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}, wall


def matrix_cells(args) -> list[dict]:
    """The cells in run order: per row, per thread setting, the XLA settings and then torch, so
    the numbers compared with each other are measured close together in time."""
    settings = args.matrix_settings.split()
    pinned_settings = args.matrix_pinned_settings.split()
    for name in settings + pinned_settings:
        if name not in XLA_SETTINGS:
            raise SystemExit(f"unknown XLA setting {name!r}; one of {' '.join(XLA_SETTINGS)}")
    cells = []
    for row in args.matrix_rows.split(","):
        model, batch = row.split(":")
        if model not in MATRIX_MODELS:
            raise SystemExit(f"--matrix_rows: unknown model {model!r} in {row!r}")
        for pin, names in ((None, settings), (args.pin_cpu, pinned_settings)):
            base = dict(model=model, batch=int(batch), pin=pin)
            cells += [dict(base, kind="jax", setting=name) for name in names]
            if not args.skip_torch:
                cells.append(dict(base, kind="torch", setting=None))
    return cells


def _cell_key(kind, depth, width, batch, pinned: bool, setting) -> tuple:
    return (kind, depth, float(width), batch, pinned, setting)


def run_matrix(args, on_progress=None, done: list[dict] | None = None) -> list[dict]:
    """Times the cells; `done` (cells of an earlier run, --resume) are kept, not re-run, and
    those of them outside this run's cells are kept as well."""
    cells = matrix_cells(args)
    dtype = args.dtype or "float32"
    all_threads = len(os.sched_getaffinity(0))
    kept = {
        _cell_key(
            c["kind"],
            c["depth"],
            c["width"],
            c["batch_size"],
            c["pinned_cpu"] is not None,
            c["xla_setting"],
        ): c
        for c in done or []
        if "error" not in c["result"] and c.get("dtype") == dtype
    }
    results = []
    for i, cell in enumerate(cells):
        label, depth, px, cifar_stem, _ = MATRIX_MODELS[cell["model"]]
        width = args.r18_width if cell["model"] == "r18" else 1.0
        threads = 1 if cell["pin"] is not None else all_threads
        key = _cell_key(
            cell["kind"], depth, width, cell["batch"], cell["pin"] is not None, cell["setting"]
        )
        if key in kept:
            print(f"[{i + 1}/{len(cells)}] kept from the earlier run: {key}", file=sys.stderr)
            earlier = kept.pop(key)
            results.append(dict(earlier, steps=earlier.get("steps", args.steps)))
            continue
        env = dict(os.environ, SSL_JAX_CPU_XLA_FLAGS="off", TF_CPP_MIN_LOG_LEVEL="2")
        if cell["kind"] == "jax":
            env["XLA_FLAGS"] = XLA_SETTINGS[cell["setting"]]
            spec = dict(
                model=cell["model"],
                batch=cell["batch"],
                width=width,
                dtype=dtype,
                steps=args.steps,
                warmup=args.warmup,
            )
            cmd = [sys.executable, os.path.abspath(__file__), "--matrix_worker", json.dumps(spec)]
        else:
            cmd = [
                sys.executable,
                os.path.join(ROOT, "benchmarks", "torch_simclr.py"),
                "--depth",
                str(depth),
                "--width",
                str(width),
                "--image_size",
                str(px),
                "--cifar_stem",
                str(int(cifar_stem)),
                "--batch_size",
                str(cell["batch"]),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(threads),
            ] + (["--amp_bf16"] if dtype == "bfloat16" else [])
        what = (
            f"{cell['kind']} {label} b{cell['batch']} threads {threads}"
            + (" pinned" if cell["pin"] is not None else "")
            + (f" XLA {cell['setting']}" if cell["setting"] else "")
        )
        print(f"[{i + 1}/{len(cells)}] {what} ...", file=sys.stderr, flush=True)
        load_before = os.getloadavg()[0]
        result, wall = _run_child(cmd, env, cell["pin"], args.matrix_timeout)
        print(
            f"    {result.get('images_per_sec', float('nan')):.2f} images/s, "
            f"{wall:.0f} s wall {result.get('error', '')}",
            file=sys.stderr,
            flush=True,
        )
        results.append(
            dict(
                kind=cell["kind"],
                model=label,
                depth=depth,
                width=width,
                image_size=px,
                batch_size=cell["batch"],
                dtype=dtype,
                threads=threads,
                pinned_cpu=cell["pin"],
                xla_setting=cell["setting"],
                xla_flags=env.get("XLA_FLAGS") if cell["kind"] == "jax" else None,
                steps=args.steps,
                finished=datetime.datetime.now().isoformat(timespec="seconds"),
                wall_s=wall,
                load_avg_1min_before=load_before,
                result=result,
            )
        )
        if on_progress is not None:
            on_progress(results + list(kept.values()))
    # Earlier cells outside this run's list stay in the results too.
    return results + list(kept.values())


def _per_cpu_s(result: dict | None, cell: dict) -> float | None:
    """Images per CPU-second of the timed steps (None where not measured)."""
    if not result or "error" in result or not result.get("cpu_s"):
        return None
    steps = result.get("steps") or cell.get("steps")
    return cell["batch_size"] * steps / result["cpu_s"] if steps else None


def matrix_table(cells: list[dict]) -> list[str]:
    """Markdown rows: one per JAX cell, beside the torch cell of the same row and threads."""

    def key(c):
        return (c["model"], c["image_size"], c["batch_size"], c["threads"], c["pinned_cpu"])

    torch_cells = {key(c): c["result"] for c in cells if c["kind"] == "torch"}
    lines = [
        "| model | px | batch | threads | XLA setting | JAX images/s | compile s | "
        "torch images/s | JAX / torch | JAX images/CPU-s | torch images/CPU-s | "
        "JAX / torch per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(XLA_SETTINGS)}
    jax_cells = sorted(
        (c for c in cells if c["kind"] == "jax"),
        key=lambda c: (
            c["depth"],
            c["batch_size"],
            c["pinned_cpu"] is not None,
            order[c["xla_setting"]],
        ),
    )
    seen_torch = set()
    for c in jax_cells:
        j, t = c["result"], torch_cells.get(key(c))
        seen_torch.add(key(c))
        threads = f"{c['threads']}" + (" pinned" if c["pinned_cpu"] is not None else "")
        model = c["model"] + (f" x{c['width']:g}" if c["width"] != 1 else "")
        jax_cells_text = (
            [j["error"][:60], "-"]
            if "error" in j
            else [f"{j['images_per_sec']:,.2f}", f"{j['compile_s']:.1f}"]
        )
        if t is None:
            torch_text = ["-", "-"]
        elif "error" in t:
            torch_text = [t["error"][:60], "-"]
        else:
            ratio = "-" if "error" in j else f"{j['images_per_sec'] / t['images_per_sec']:.2f}"
            torch_text = [f"{t['images_per_sec']:,.2f}", ratio]
        j_cpu, t_cpu = _per_cpu_s(j, c), _per_cpu_s(t, c)
        cpu_text = [
            "-" if j_cpu is None else f"{j_cpu:,.2f}",
            "-" if t_cpu is None else f"{t_cpu:,.2f}",
            "-" if j_cpu is None or t_cpu is None else f"{j_cpu / t_cpu:.2f}",
        ]
        lines.append(
            f"| {model} | {c['image_size']} | {c['batch_size']} | {threads} | "
            f"{c['xla_setting']} | " + " | ".join(jax_cells_text + torch_text + cpu_text) + " |"
        )
    for c in cells:  # torch cells with no JAX cell beside them
        if c["kind"] == "torch" and key(c) not in seen_torch:
            t = c["result"]
            threads = f"{c['threads']}" + (" pinned" if c["pinned_cpu"] is not None else "")
            value = t["error"][:60] if "error" in t else f"{t['images_per_sec']:,.2f}"
            t_cpu = _per_cpu_s(t, c)
            lines.append(
                f"| {c['model']} | {c['image_size']} | {c['batch_size']} | {threads} | - | - | "
                f"- | {value} | - | - | {'-' if t_cpu is None else f'{t_cpu:,.2f}'} | - |"
            )
    return lines


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


def markdown(
    env: dict,
    step_rows: list[dict],
    pipeline_rows: list[dict],
    args,
    matrix: list[dict] | None = None,
) -> str:
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
    if args.note:
        lines += [args.note, ""]
    if matrix:
        lines += [
            "## Train step by XLA setting and threads (each cell its own process)",
            "",
            "images/s counts input images (the batch); each image gives two views. JAX: the "
            "trainer's SimCLR step (LARS, online probe), PyTorch: benchmarks/torch_simclr.py "
            "(SGD). XLA setting: what XLA_FLAGS held in the JAX process, with "
            "SSL_JAX_CPU_XLA_FLAGS=off so ssl_jax added nothing: default = no flag "
            "(convolutions in YNNPACK), `-individual_convolution` = "
            f"`{YNN_FLAG}=-individual_convolution` (and likewise with `,-reduce`: no YNN "
            f"reduce fusions either), empty = `{YNN_FLAG}=` (every YNN fusion off). "
            "threads: all host CPUs, or 1 pinned = the process pinned to CPU "
            f"{args.pin_cpu} (XLA's pool then has one thread; torch.set_num_threads(1)). "
            f"dtype {args.dtype or 'float32'}. The torch number is the same in each row of a "
            "model and thread setting.",
            "",
            *matrix_table(matrix),
            "",
        ]
    if step_rows:
        lines += [
            "## Train step (random uint8 inputs already on device; input pipeline not timed)",
            "",
            "images/s counts input images (the batch); each image gives two views, so the "
            "network sees twice as many. JAX uses LARS (the SimCLR config), PyTorch SGD.",
            "",
            "| model | px | batch | dtype | XLA setting | JAX images/s | JAX step ms | "
            f"compile s | {memory_header} | torch images/s | torch step ms | JAX / torch |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
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
                f"{r.get('xla_setting', '?')} | {j['images_per_sec']:,.1f} | "
                f"{j['step_ms']:,.1f} | {j['compile_s']:.1f} | "
                f"{_mib(memory)} | " + " | ".join(torch_cells) + " |"
            )
        if not on_accelerator:
            lines += [
                "",
                "On CPU the memory column is XLA's plan for the compiled step "
                "(scratch + arguments + outputs - donated buffers), not a measured peak.",
            ]
        lines += [
            "",
            "XLA setting: the `" + YNN_FLAG + "` value in XLA_FLAGS when the step ran "
            "(default: none, convolutions in YNNPACK; empty: every YNN fusion off).",
        ]
        lines.append("")
    if pipeline_rows:
        lines += [
            "## Input pipeline alone (ssl_jax.data.train_batches, demo images, two views)",
            "",
            "| recipe | px | batch | examples/s | views/s | host CPUs |",
            "|---|---|---|---|---|---|",
        ]
        carried = sorted({p["carried_from"] for p in pipeline_rows if "carried_from" in p})
        if carried:
            lines[-2:-2] = [
                f"Not re-run with this table: measured {', '.join(carried)} (kept from the "
                "previous results file).",
                "",
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
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="instead of the step rows: time every --matrix_rows x threads x XLA setting cell "
        "in a process of its own (CPU), torch beside each row and thread setting",
    )
    parser.add_argument(
        "--matrix_rows",
        default="r18:64,r18:256,r50:16",
        help="model:batch list; r18 = ResNet-18 CIFAR stem 32 px (width --r18_width), "
        "r50 = ResNet-50 224 px",
    )
    parser.add_argument(
        "--matrix_settings",
        default=" ".join(XLA_SETTINGS),
        help=f"XLA settings on all host CPUs, space-separated, from {' '.join(XLA_SETTINGS)}",
    )
    parser.add_argument(
        "--matrix_pinned_settings",
        default=" ".join(XLA_SETTINGS),
        help="XLA settings on one pinned core, space-separated (empty string: no pinned JAX "
        "cells)",
    )
    parser.add_argument("--pin_cpu", type=int, default=0, help="the CPU of the pinned cells")
    parser.add_argument(
        "--matrix_timeout", type=float, default=1800.0, help="seconds per matrix cell"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="--matrix: keep the cells already in the output .json (no error, same dtype) and "
        "time only the missing ones (model, batch, width, threads, setting)",
    )
    parser.add_argument("--matrix_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--render",
        default=None,
        metavar="JSON",
        help="only rewrite the Markdown table (beside JSON, or --output) from a results .json",
    )
    parser.add_argument(
        "--note", default="", help="a line printed under the table's header (e.g. host load)"
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


def _previous_pipeline_rows(json_path: str) -> list[dict]:
    """The input-pipeline rows of an earlier results file, each marked with its date."""
    try:
        with open(json_path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return []
    date = previous.get("environment", {}).get("date", "an unknown date")
    return [
        dict(row, carried_from=row.get("carried_from", date))
        for row in previous.get("input_pipeline", [])
    ]


def _previous_matrix_cells(json_path: str) -> list[dict]:
    try:
        with open(json_path) as f:
            return json.load(f).get("train_step_matrix") or []
    except (OSError, ValueError):
        return []


def render(json_path: str, output: str | None) -> None:
    """Rewrites the Markdown of a results .json (e.g. after merging runs into it)."""
    with open(json_path) as f:
        raw = json.load(f)
    args = parse_args([])
    vars(args).update(raw["args"])
    matrix = raw.get("train_step_matrix")
    for cell in matrix or []:
        cell.setdefault("steps", args.steps)
    table = markdown(raw["environment"], raw["train_step"], raw["input_pipeline"], args, matrix)
    output = output or os.path.splitext(json_path)[0] + ".md"
    with open(output, "w") as f:
        f.write(table)
    print(table)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.matrix_worker is not None:
        matrix_worker(json.loads(args.matrix_worker))
        return
    if args.render is not None:
        render(args.render, args.output)
        return
    if args.torch_threads and torch_simclr.torch_available():
        torch_simclr.torch.set_num_threads(args.torch_threads)
    env = environment()
    output = args.output or os.path.join(
        ROOT, "benchmarks", "results", f"throughput_{env['platform']}.md"
    )
    json_path = os.path.splitext(output)[0] + ".json"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)

    def write(step_rows, pipeline_rows, matrix, quiet=False):
        table = markdown(env, step_rows, pipeline_rows, args, matrix)
        if not quiet:
            print(table)
        with open(output, "w") as f:
            f.write(table)
        raw = {
            "environment": env,
            "args": vars(args),
            "train_step": step_rows,
            "input_pipeline": pipeline_rows,
        }
        if matrix is not None:
            raw["train_step_matrix"] = matrix
        with open(json_path, "w") as f:
            json.dump(raw, f, indent=2)

    if args.matrix:
        # Keep the earlier input-pipeline rows (dated) unless they are re-run below, and write
        # the file after every cell so that a long matrix stopped half way keeps what it timed.
        old_pipeline = _previous_pipeline_rows(json_path) if args.skip_pipeline else []
        done = _previous_matrix_cells(json_path) if args.resume else None
        matrix = run_matrix(
            args, on_progress=lambda m: write([], old_pipeline, m, quiet=True), done=done
        )
        step_rows = []
        pipeline_rows = old_pipeline if args.skip_pipeline else run_pipeline_rows(args)
    else:
        matrix = None
        step_rows = run_step_rows(args)
        pipeline_rows = [] if args.skip_pipeline else run_pipeline_rows(args)
    write(step_rows, pipeline_rows, matrix)
    print(f"wrote {output} and its .json", file=sys.stderr)


if __name__ == "__main__":
    main()
