"""Per-device memory of the compiled SimCLR train step at ImageNet scale; bf16 vs float32 speed.

Memory table: the trainer's own step (ssl_jax.train.build_training: create_state and train_step,
jitted over a mesh with the state replicated, the batch sharded along `data` and the state
donated) for the ImageNet recipe of configs/simclr.py (ResNet-50, 224 px, two views, LARS, the
1000-class online probe), at each --batches global batch over --devices devices, in float32 and
bfloat16. The step is lowered with abstract inputs (jax.ShapeDtypeStruct: no state or images are
allocated, so batch 16384 compiles on a laptop) and compiled; `compiled.memory_analysis()` is
XLA's buffer plan for ONE device (every device runs the same program on its share):

    arguments      state (replicated) + this device's rows of the batch
    outputs        new state + metrics
    donated        the part of the outputs written into donated argument buffers
    temporaries    activations kept for the backward pass, gradients, the loss's [2N / devices,
                   2N] logits, scratch
    generated code the compiled program (0 where the backend does not report it, e.g. CPU)
    total          arguments + outputs - donated + temporaries: what the step needs at once

On a CPU host the devices are simulated (--xla_force_host_platform_device_count, set below
before jax starts), so the plan is XLA:CPU's. A TPU's differs: its compiler fuses and lays out
differently (channels padded to 128 lanes, bf16 convolutions native where XLA:CPU computes them
in float32), and it rematerialises activations when a program would not fit. Run this on the
accelerator itself for its own numbers; the CPU table shows the scale and how it grows.

Throughput table: benchmarks/throughput.py's ResNet-18 row (CIFAR stem, 32 px, --r18_batch) in a
child process per dtype, on this host's real devices (the simulated device count is not passed
on), a few timed steps after warm-up.

    python benchmarks/memory.py                    # 2 CPU cores: ~7 min memory, ~4 min speed
    python benchmarks/memory.py --skip_throughput --batches 8192,16384

The Markdown is printed and written to --output (default benchmarks/results/memory_<platform>.md),
the raw numbers beside it as .json. --skip_memory / --skip_throughput keep that part's rows from
the previous results file, marked with the date they were measured.
"""

import argparse
import collections
import datetime
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time

SIMULATED_DEVICES_FLAG = "--xla_force_host_platform_device_count"
# Only the CPU backend reads it: on a TPU or GPU host jax.devices() are the accelerators.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {SIMULATED_DEVICES_FLAG}=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # so `configs` imports however this file is run
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import simclr  # noqa: E402
from ssl_jax import models, parallel, train  # noqa: E402

IMAGENET_TRAIN_EXAMPLES = 1_281_167
IMAGENET_CLASSES = 1000
GIB = 2**30


def step_memory(config, devices: list) -> dict:
    """XLA's per-device memory plan of the compiled SimCLR step for config (nothing allocated)."""
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(config.batch_size, mesh)
    steps_per_epoch = max(IMAGENET_TRAIN_EXAMPLES // config.batch_size, 1)
    training = train.build_training(
        config,
        mesh,
        num_classes=IMAGENET_CLASSES,
        steps_per_epoch=steps_per_epoch,
        num_steps=train.total_steps(config, steps_per_epoch),
    )
    shapes = jax.eval_shape(training.init, jax.random.PRNGKey(0))
    state = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes,
        training.state_sharding,
    )
    rows = parallel.batch_sharded(mesh)
    n = config.batch_size
    batch = {
        "views": [
            jax.ShapeDtypeStruct((n, r.size, r.size, 3), jnp.uint8, sharding=rows)
            for r in training.recipes
        ],
        "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=rows),
    }
    start = time.perf_counter()
    compiled = training.step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    out = {
        "convolutions": convolution_dtypes(compiled.as_text()),
        "dtype": config.dtype,
        "global_batch": n,
        "devices": len(devices),
        "images_per_device": n // len(devices),
        "views_per_device": len(training.recipes) * n // len(devices),
        "compile_s": compile_s,
        "state_bytes": _bytes(shapes),
        "params_bytes": _bytes(shapes.params),
        "opt_state_bytes": _bytes(shapes.opt_state),
        "param_count": models.param_count(shapes.params),
    }
    if analysis is None:
        return out | {"error": "memory_analysis() gave nothing on this backend"}
    fields = ("argument", "output", "alias", "temp", "generated_code")
    out |= {f"{f}_bytes": int(getattr(analysis, f"{f}_size_in_bytes")) for f in fields}
    out["total_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    )
    return out


def convolution_dtypes(hlo: str) -> dict[str, int]:
    """{element type: count} of the convolutions in compiled HLO text (XLA's own `convolution`
    ops and cuDNN's custom calls): the precision the backend really convolves in."""
    found = re.findall(r"= \(?(\w+)\[[^\n]*?(?: convolution\(|cudnn\$conv)", hlo)
    return dict(collections.Counter(found))


def _bytes(tree) -> int:
    return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def run_memory_rows(args, devices: list) -> list[dict]:
    rows = []
    for dtype in args.dtypes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            print(f"compiling ResNet-50 SimCLR, batch {batch}, {dtype} ...", file=sys.stderr,
                  flush=True)  # fmt: skip
            config = simclr.get_config()  # the ImageNet recipe
            config.batch_size, config.dtype = batch, dtype
            rows.append(step_memory(config, devices))
    return rows


# ------------------------------------------------------------------------- bf16 vs float32 speed


def child_env() -> dict:
    """This environment without the simulated device count: the child times the host's own
    devices (one CPU device on a CPU host), as a user's run would."""
    env = dict(os.environ)
    flags = [
        f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(SIMULATED_DEVICES_FLAG)
    ]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def run_throughput_rows(args) -> list[dict]:
    """throughput.py's ResNet-18 row, one child process per dtype, the dtypes alternating for
    --rounds rounds (on a shared host the load drifts: compare rows of the same round)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_, dtype in itertools.product(range(1, args.rounds + 1), args.dtypes.split(",")):
            print(f"timing ResNet-18 CIFAR, batch {args.r18_batch}, {dtype}, round {round_} ...",
                  file=sys.stderr, flush=True)  # fmt: skip
            output = os.path.join(tmp, f"{dtype}_{round_}.md")
            cmd = [
                sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"),
                "--skip_r50", "--skip_torch", "--skip_pipeline",
                "--r18_width", "1.0", "--r18_batch", str(args.r18_batch),
                "--steps", str(args.steps), "--warmup", str(args.warmup),
                "--dtype", dtype, "--output", output,
            ]  # fmt: skip
            load = os.getloadavg()[0]
            proc = subprocess.run(cmd, env=child_env(), cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                error = f"exit {proc.returncode}: {tail[:200]}"
                rows.append({"dtype": dtype, "round": round_, "error": error})
                continue
            with open(os.path.splitext(output)[0] + ".json") as f:
                raw = json.load(f)
            step = raw["train_step"][0]
            rows.append(
                {
                    "dtype": dtype,
                    "round": round_,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "model": step["model"],
                    "image_size": step["image_size"],
                    "batch_size": step["batch_size"],
                    "xla_setting": step["xla_setting"],
                    "device_count": raw["environment"]["device_count"],
                    "load_avg_1min": load,
                    **step["jax"],
                }
            )
    return rows


# ----------------------------------------------------------------------------------- the tables


def _carried(rows: list[dict]) -> list[str]:
    dates = sorted({r["measured"] for r in rows if "measured" in r})
    return (
        [f"Not re-run: measured {', '.join(dates)} (kept from the previous results file).", ""]
        if dates
        else []
    )


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f}"


def _convolutions(counts: dict) -> str:
    return ", ".join(f"{dtype} x{n}" for dtype, n in sorted(counts.items())) or "none found"


def markdown(env: dict, memory_rows: list[dict], speed_rows: list[dict], args) -> str:
    lines = [
        f"# SimCLR step memory and bf16 speed on {env['device_count']} x {env['device_kind']} "
        f"({env['platform']})",
        "",
        f"{env['date']} | jax {env['jax']} | host CPUs {env['host_cpus']}"
        + (f" | {args.note}" if args.note else ""),
        "",
    ]
    if memory_rows:
        first = memory_rows[0]
        simulated = env["platform"] == "cpu"
        lines += [
            "## Compiled per-device memory of the train step (ResNet-50, 224 px, ImageNet recipe)",
            "",
            *_carried(memory_rows),
            "configs/simclr.py's default preset (ResNet-50, two 224 px views, LARS, projector "
            "2048-2048-128, 1000-class online probe) at each global batch, the trainer's step "
            "lowered with abstract inputs and compiled for "
            + (
                f"{first['devices']} simulated CPU devices"
                if simulated
                else f"{first['devices']} {env['platform']} devices"
            )  # fmt: skip
            + "; `compiled.memory_analysis()` for one device, GiB (2^30 bytes). Parameters "
            f"{first['param_count']:,} ({_gib(first['params_bytes'])} GiB float32), optimiser "
            f"state {_gib(first['opt_state_bytes'])} GiB, whole replicated state "
            f"{_gib(first['state_bytes'])} GiB: float32 in both dtypes.",
            "",
            "| dtype | global batch | devices | images / device | arguments | outputs | "
            "donated | temporaries | generated code | total | convolutions in | compile s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in memory_rows:
            if "error" in r:
                lines.append(f"| {r['dtype']} | {r['global_batch']} | {r['devices']} | "
                             f"{r['images_per_device']} | {r['error']} |||||||")  # fmt: skip
                continue
            lines.append(
                f"| {r['dtype']} | {r['global_batch']:,} | {r['devices']} | "
                f"{r['images_per_device']:,} | {_gib(r['argument_bytes'])} | "
                f"{_gib(r['output_bytes'])} | {_gib(r['alias_bytes'])} | "
                f"{_gib(r['temp_bytes'])} | {_gib(r['generated_code_bytes'])} | "
                f"**{_gib(r['total_bytes'])}** | {_convolutions(r['convolutions'])} | "
                f"{r['compile_s']:.0f} |"
            )
        if simulated:
            lines += [
                "",
                "XLA:CPU's plan; a TPU's differs (its own fusion, 128-lane padding, native bf16 "
                "convolutions, rematerialisation when a program would not fit): run "
                "`python benchmarks/memory.py --skip_throughput` on the slice for its numbers. "
                "In particular XLA:CPU convolves in float32 whatever the compute dtype (the "
                "`convolutions in` column counts the compiled program's convolution ops by "
                "element type), converting bf16 activations to and from float32 around each, so "
                "its bfloat16 rows hold more than its float32 rows: they do not show what "
                "bfloat16 saves on an accelerator.",
            ]
        lines.append("")
    if speed_rows:
        base = {r["round"]: r for r in speed_rows if r["dtype"] == "float32" and "error" not in r}
        first = speed_rows[0]
        lines += [
            "## Train-step throughput, bfloat16 vs float32 (this host)",
            "",
            *_carried(speed_rows),
            "benchmarks/throughput.py's ResNet-18 row (CIFAR stem, width 1, LARS, online probe), "
            f"one process per dtype, {first.get('steps')} timed steps after "
            f"{first.get('warmup')} warm-up, the dtypes alternating round by round (compare "
            "rows of one round: the host's load drifts). "
            + (
                "**Shared machine: other work ran on the same cores, so the wall-clock numbers "
                "are upper bounds on the step time; CPU s / step is less affected.**"
                if env["platform"] == "cpu"
                else ""
            ),  # fmt: skip
            "",
            "| round | model | px | batch | dtype | devices | XLA setting | images/s | step ms | "
            "CPU s / step | compile s | vs float32 | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in speed_rows:
            if "error" in r:
                lines.append(f"| {r['round']} | | | | {r['dtype']} | {r['error']} ||||||||")
                continue
            b = base.get(r["round"])
            ratio = f"{r['images_per_sec'] / b['images_per_sec']:.2f}" if b else "n/a"
            lines.append(
                f"| {r['round']} | {r['model']} | {r['image_size']} | {r['batch_size']} | "
                f"{r['dtype']} | {r['device_count']} | {r['xla_setting']} | "
                f"{r['images_per_sec']:.2f} | {r['step_ms']:,.0f} | "
                f"{r['cpu_s'] / r['steps']:.1f} | {r['compile_s']:.1f} | {ratio} | "
                f"{r['load_avg_1min']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="devices of the memory mesh")
    parser.add_argument(
        "--batches", default="256,1024,4096,8192,16384", help="global batches of the memory rows"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes")
    parser.add_argument(
        "--skip_memory", action="store_true", help="keep the previous results' memory rows"
    )
    parser.add_argument(
        "--skip_throughput", action="store_true", help="keep the previous results' speed rows"
    )
    parser.add_argument("--r18_batch", type=int, default=64, help="throughput rows' batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per throughput row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rows per dtype")
    parser.add_argument("--note", default="", help="a line under the header (e.g. host load)")
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown file (default benchmarks/results/memory_<platform>.md); the raw "
        "numbers go beside it with a .json suffix",
    )
    args = parser.parse_args(argv)
    for dtype in args.dtypes.split(","):
        if dtype not in ("float32", "bfloat16"):
            parser.error(f"--dtypes: {dtype!r} is not float32 or bfloat16")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    return args


def _previous(json_path: str, part: str) -> list[dict]:
    """The rows of `part` in an earlier results file, each with the date it was measured; [] when
    there are none (then --skip_* measures nothing and the part is left out)."""
    try:
        with open(json_path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return []
    date = previous.get("environment", {}).get("date", "an unknown date")
    return [dict(row, measured=row.get("measured", date)) for row in previous.get(part, [])]


def main(argv=None) -> None:
    args = parse_args(argv)
    if len(jax.devices()) < args.devices:
        sys.exit(f"--devices {args.devices}: only {len(jax.devices())} devices here")
    devices = jax.devices()[: args.devices]
    device = devices[0]
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": len(devices),
        "host_cpus": os.cpu_count(),
        "jax": jax.__version__,
    }
    output = args.output or os.path.join(
        ROOT, "benchmarks", "results", f"memory_{env['platform']}.md"
    )
    json_path = os.path.splitext(output)[0] + ".json"
    # A skipped part keeps the rows of the previous results file, each marked with its date.
    if args.skip_memory:
        memory_rows = _previous(json_path, "memory")
    else:
        memory_rows = run_memory_rows(args, devices)
    if args.skip_throughput:
        speed_rows = _previous(json_path, "throughput")
    else:
        speed_rows = run_throughput_rows(args)
    table = markdown(env, memory_rows, speed_rows, args)
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write(table)
    raw = {"environment": env, "args": vars(args), "memory": memory_rows, "throughput": speed_rows}
    with open(json_path, "w") as f:
        json.dump(raw, f, indent=2)
    print(f"wrote {output} and its .json", file=sys.stderr)


if __name__ == "__main__":
    main()
