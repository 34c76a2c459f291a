"""All methods side by side: the same backbone, data and step budget, then kNN and linear top-1.

For each method it loads configs/<method>.py:<preset>, overrides the dataset, backbone width,
batch, steps and warmup with the flags below, runs the real trainer
(ssl_jax.train.train_and_evaluate) in-process, one method after another, each in
<workdir_root>/<method>, and reads back results.json and metrics.jsonl. A method whose workdir
already has results.json is not rerun (its numbers are read), so a rerun with the same
--workdir_root finishes an interrupted table; an unfinished one resumes from its checkpoint.

Full table (GPU or TPU host; CIFAR-10 JPEGs from ../shared/data, ResNet-18 x0.125, 300 steps):

    python benchmarks/methods.py --workdir_root /tmp/ssl_jax_methods/c10

Quick check on a CPU (the bundled demo set, seconds per method):

    python benchmarks/methods.py --dataset demo --preset runlocal --methods simclr,byol \
        --total_steps 3 --batch_size 32 --image_size 16 --output /tmp/methods_smoke.md

The table is printed and written to --output (default benchmarks/results/methods_<platform>.md),
the raw numbers beside it as .json.
"""

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as in benchmarks/quality.py
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402
from absl import logging  # noqa: E402

from ssl_jax import config_check, train  # noqa: E402
from ssl_jax.errors import UserError, exit_on_error  # noqa: E402

try:  # python -m benchmarks.methods
    from benchmarks.quality import DEFAULT_TAR, ROOT, metrics_lines, unpack_cifar10
except ImportError:  # python benchmarks/methods.py: benchmarks/ is on sys.path
    from quality import DEFAULT_TAR, ROOT, metrics_lines, unpack_cifar10

METHODS = ("simclr", "mocov2", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg")


def method_config(method: str, preset: str):
    """configs/<method>.py:get_config(preset), loaded by path (configs/ is not installed)."""
    path = os.path.join(ROOT, "configs", f"{method}.py")
    if not os.path.isfile(path):
        raise UserError(f"no config {path}; methods are {', '.join(METHODS)}")
    spec = importlib.util.spec_from_file_location(f"{method}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def build_config(method: str, args, dataset: str):
    """The method's preset with the benchmark's common budget, backbone and data."""
    config = method_config(method, args.preset)
    config.dataset = dataset
    config.model.name = "resnet18"
    config.model.width = args.width
    config.batch_size = args.batch_size
    config.image_size = args.image_size  # the view recipes' size follows this reference
    config.total_steps = args.total_steps
    config.warmup_epochs = args.warmup_epochs
    config.eval_every_steps = 0  # evaluate only at the end: not counted in the train time
    config.eval_random_init = True
    config.seed = args.seed
    # At least ~10 logged speeds for the median, whatever the preset's interval.
    config.log_every_steps = max(1, min(config.log_every_steps, args.total_steps // 10))
    if args.dtype:
        config.dtype = args.dtype
    return config_check.validate(config)


def run_method(method: str, args, dataset: str) -> dict:
    """Trains and evaluates one method unless its workdir has results.json; returns a row."""
    workdir = os.path.join(args.workdir_root, method)
    results_path = os.path.join(workdir, "results.json")
    config = build_config(method, args, dataset)
    if os.path.exists(results_path):
        print(f"{method}: {results_path} exists, reading it", file=sys.stderr)
    else:
        train.train_and_evaluate(config, workdir)
    with open(results_path) as f:
        results = json.load(f)
    if results["step"] != args.total_steps:
        raise UserError(
            f"{results_path} is for {results['step']} steps, not {args.total_steps}: "
            "pass another --workdir_root"
        )
    records = [json.loads(line) for line in metrics_lines(workdir)]
    logged = [r for r in records if "embedding_std" in r]  # training steps, not events
    speeds = [r["images_per_sec"] for r in logged if r.get("images_per_sec") is not None]
    last = logged[-1] if logged else {}
    return {
        "method": method,
        "backbone": f"ResNet-18 x{config.model.width:g}",
        "epochs": last.get("epoch"),
        "steps": results["step"],
        "train_seconds": results["train_seconds"],
        # Median over the logged windows; each starts after the compiling first step.
        "images_per_sec": statistics.median(speeds) if speeds else None,
        "knn_top1": results.get("knn_top1"),
        "linear_top1": results.get("linear_top1"),
        "random_init_knn_top1": results.get("random_init_knn_top1"),
        "random_init_linear_top1": results.get("random_init_linear_top1"),
        "embedding_std": last.get("embedding_std"),
        "effective_rank": last.get("effective_rank"),
        "workdir": workdir,
    }


def time_step(method: str, args, *, steps: int = 5) -> dict:
    """The method's jitted train step alone on random uint8 views already on the devices."""
    import numpy as np

    from ssl_jax import parallel

    config = build_config(method, args, "demo")
    mesh = parallel.make_mesh()
    training = train.build_training(
        config, mesh, num_classes=10, steps_per_epoch=100, num_steps=max(args.total_steps, 100)
    )
    state = training.initial_state(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    size, batch = config.image_size, config.batch_size
    host = {
        "views": [rng.integers(0, 256, (batch, size, size, 3), np.uint8) for _ in training.recipes],
        "label": rng.integers(0, 10, (batch,), np.int32),
    }
    global_batch = parallel.to_global(host, mesh)
    state, metrics = training.step_fn(state, global_batch)  # compiles
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = training.step_fn(state, global_batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return {"method": method, "step_ms": 1000 * seconds, "images_per_sec": batch / seconds}


def step_markdown(rows: list[dict], env: dict, args) -> str:
    simclr = next((r["images_per_sec"] for r in rows if r["method"] == "simclr"), None)
    lines = [
        f"# Train step per method ({env['device']})",
        "",
        f"{env['date']} | jax {env['jax']} | ResNet-18 x{args.width:g}, {args.image_size} px, "
        f"batch {args.batch_size}, preset {args.preset} heads | random uint8 views on device",
        "",
        "| method | step ms | images/s | step cost vs SimCLR |",
        "|---|---|---|---|",
    ]
    for r in rows:
        cost = f"{simclr / r['images_per_sec']:.2f}x" if simclr else "n/a"
        lines.append(
            f"| {r['method']} | {r['step_ms']:,.0f} | {r['images_per_sec']:,.0f} | {cost} |"
        )
    lines.append("")
    return "\n".join(lines)


def markdown(rows: list[dict], env: dict, args, dataset_name: str) -> str:
    def fmt(x, spec):
        return "n/a" if x is None else format(x, spec)

    def pct(x):
        return fmt(None if x is None else 100 * x, ".1f")

    simclr = next((r["images_per_sec"] for r in rows if r["method"] == "simclr"), None)
    lines = [
        f"# SSL methods at the same budget on {dataset_name} ({env['device']})",
        "",
        f"{env['date']} | jax {env['jax']} | preset {args.preset} | {args.total_steps} steps, "
        f"batch {args.batch_size}, {args.image_size} px, warmup {args.warmup_epochs:g} epochs | "
        "top-1 % on the test split; kNN k=200",
        "",
        "| method | backbone | epochs | train s | images/s | step cost vs SimCLR | kNN top-1 | "
        "linear top-1 | random-init kNN | embedding std | effective rank |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ips = r["images_per_sec"]
        cost = f"{simclr / ips:.2f}x" if simclr and ips else "n/a"
        lines.append(
            f"| {r['method']} | {r['backbone']} | {fmt(r['epochs'], '.2f')} | "
            f"{r['train_seconds']:,.0f} | {fmt(ips, ',.0f')} | {cost} | {pct(r['knn_top1'])} | "
            f"{pct(r['linear_top1'])} | {pct(r['random_init_knn_top1'])} | "
            f"{fmt(r['embedding_std'], '.4f')} | {fmt(r['effective_rank'], '.1f')} |"
        )
    lines += [
        "",
        "train s: wall clock of the training loop (compilation, input pipeline and checkpoints "
        "included). images/s: median of the logged steady-state speeds (the compiling first step "
        "excluded); step cost is SimCLR's images/s over the method's. embedding std (about "
        "1/sqrt(D) when healthy, 0 when collapsed) and effective rank (of the D-dimensional "
        "embeddings of a batch) are the last logged values; D differs between methods.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated list")
    parser.add_argument(
        "--step_only",
        action="store_true",
        help="only time each method's train step on random inputs (no data, no evaluation)",
    )
    parser.add_argument(
        "--dataset",
        choices=("cifar10", "demo"),
        default="cifar10",
        help="cifar10: the JPEG tar unpacked to --data_root; demo: bundled set",
    )
    parser.add_argument("--cifar_tar", default=DEFAULT_TAR, help="the CIFAR-10 JPEG tar.gz")
    parser.add_argument("--data_root", default="/tmp/ssl_jax_cifar10", help="unpacked here once")
    parser.add_argument("--preset", default="cifar10", help="config preset to start from")
    parser.add_argument("--width", type=float, default=0.125, help="ResNet-18 width multiplier")
    parser.add_argument("--batch_size", type=int, default=256, help="global batch")
    parser.add_argument("--total_steps", type=int, default=300, help="budget in steps")
    parser.add_argument("--warmup_epochs", type=float, default=0.5)
    parser.add_argument("--image_size", type=int, default=32, help="view side in pixels")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default=None, help="default: the preset's"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir_root",
        default=None,
        help="one workdir per method under it (default: a new "
        "/tmp/ssl_jax_methods/<time>); finished methods are read, not rerun",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown file (default benchmarks/results/methods_<platform>.md); "
        "the raw numbers go beside it as .json",
    )
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.total_steps <= 0:
        parser.error("--total_steps must be > 0")
    args.workdir_root = args.workdir_root or os.path.join(
        "/tmp/ssl_jax_methods", time.strftime("%Y%m%d-%H%M%S")
    )
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    with exit_on_error():
        if args.step_only:
            rows = [time_step(m, args) for m in args.methods]
        else:
            if args.dataset == "demo":
                dataset, dataset_name = "demo", "the demo set"
            else:
                dataset = f"imagefolder:{unpack_cifar10(args.cifar_tar, args.data_root)}"
                dataset_name = "CIFAR-10"
            rows = [run_method(m, args, dataset) for m in args.methods]
    if jax.process_index() != 0:  # only the lead host writes results.json
        return
    device = jax.devices()[0]
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": device.platform,
        "device": f"{jax.device_count()} x {device.device_kind}",
        "jax": jax.__version__,
    }
    if args.step_only:
        table = step_markdown(rows, env, args)
    else:
        table = markdown(rows, env, args, dataset_name)
    print(table)
    output = args.output or os.path.join(
        ROOT,
        "benchmarks",
        "results",
        f"method_steps_{env['platform']}.md" if args.step_only else f"methods_{env['platform']}.md",
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write(table)
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump({"environment": env, "args": vars(args), "rows": rows}, f, indent=2)
    print(f"wrote {output} and its .json", file=sys.stderr)


if __name__ == "__main__":
    main()
