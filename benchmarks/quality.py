"""Representation quality: SimCLR pretraining on CIFAR-10 for a fixed budget, then kNN and linear.

It unpacks the CIFAR-10 JPEG image folder once, runs the real trainer
(ssl_jax.train.train_and_evaluate) with configs/simclr.py:cifar10 overridden by the flags below,
and reads the workdir's results.json: kNN (k=200) and linear top-1 on the 10,000 test images, for
the pretrained encoder and for a randomly initialised one of the same architecture (the floor
that pretraining has to beat).

Full measurement (GPU or TPU host; ResNet-18 at batch 512 for 100 epochs, 9,700 steps):

    python benchmarks/quality.py --epochs 100

Quick check on a CPU (a few minutes, mostly the feature extraction of the 60,000 images):

    python benchmarks/quality.py --width 0.125 --total_steps 5 --batch_size 64 \
        --output /tmp/quality_cpu.md

The table is printed and written to --output (default benchmarks/results/quality_<platform>.md),
the raw numbers beside it as .json. A second run with the same --workdir resumes that run (and
then only times the steps it still had to do).
"""

import argparse
import datetime
import importlib.util
import json
import os
import sys
import tarfile
import time

# tf.data only feeds the input pipeline; keep its start-up chatter out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The same TF settings as `python -m ssl_jax.main`, so the input pipeline behaves as in training.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402
from absl import logging  # noqa: E402

from ssl_jax import config_check, train  # noqa: E402
from ssl_jax.errors import UserError, exit_on_error  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TAR = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg.tar.gz")


def unpack_cifar10(tar_path: str, data_root: str) -> str:
    """Unpacks the image-folder tar (train/<class>/*.jpg, test/<class>/*.jpg) unless it is there.

    The archive is extracted into a sibling temporary folder that is renamed into place at the
    end, so an interrupted extraction is never mistaken for a complete one.

    Returns:
      data_root.

    Raises:
      UserError: the tar is missing, or data_root exists without both splits (we do not delete
        what we did not make).
    """
    splits = [os.path.join(data_root, split) for split in ("train", "test")]
    if all(os.path.isdir(s) for s in splits):
        return data_root
    if os.path.exists(data_root):
        raise UserError(
            f"{data_root} exists but lacks train/ and test/; remove it or pass another --data_root"
        )
    if not os.path.isfile(tar_path):
        raise UserError(f"CIFAR-10 archive {tar_path} not found; pass --cifar_tar")
    partial = f"{data_root}.partial-{os.getpid()}"
    print(f"unpacking {tar_path} to {data_root} ...", flush=True)
    with tarfile.open(tar_path) as tar:
        # The "data" filter refuses absolute paths and links out of the folder (Python >= 3.11.4).
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(partial, **kwargs)
    os.replace(partial, data_root)
    return data_root


def simclr_cifar10_config():
    """configs/simclr.py:get_config("cifar10"), loaded by path (configs/ is not installed)."""
    path = os.path.join(ROOT, "configs", "simclr.py")
    spec = importlib.util.spec_from_file_location("simclr_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("cifar10")


def build_config(args, data_root: str):
    """The CIFAR-10 SimCLR preset with the benchmark's budget, model and dataset."""
    config = simclr_cifar10_config()
    config.dataset = f"imagefolder:{data_root}"
    config.model.name = args.model
    config.model.width = args.width
    config.batch_size = args.batch_size
    config.image_size = args.image_size  # the view recipe's size follows this reference
    if args.dtype:
        config.dtype = args.dtype
    if args.total_steps:
        config.total_steps = args.total_steps
    else:
        config.num_epochs = args.epochs
        config.total_steps = 0
    config.eval_random_init = True
    # Evaluate only at the end: intermediate evaluations would be counted in the train time.
    config.eval_every_steps = 0
    config.seed = args.seed
    if args.temperature is not None:
        config.temperature = args.temperature
    if args.warmup_epochs is not None:
        config.warmup_epochs = args.warmup_epochs
    return config_check.validate(config)


def count_images(folder: str) -> int:
    """Files under folder/<class>/: the train split size, for the epoch count."""
    return sum(
        1
        for entry in os.scandir(folder)
        if entry.is_dir()
        for f in os.scandir(entry.path)
        if f.is_file()
    )


def metrics_lines(workdir: str) -> list[str]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.readlines()


def resumed_from(new_lines: list[str]) -> int:
    """The step this invocation started from: its `resume` event in metrics.jsonl, else 0."""
    for line in new_lines:
        record = json.loads(line)
        if record.get("event") == "resume":
            return record["step"]
    return 0


def summarize(config, results: dict, *, workdir: str, num_train: int, start_step: int) -> dict:
    steps = results["step"]
    run_steps = steps - start_step
    train_seconds = results["train_seconds"]
    return {
        "method": config.method,
        "backbone": config.model.name,
        "width": config.model.width,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "epochs": steps / (num_train // config.batch_size),
        "steps": steps,
        "steps_this_run": run_steps,
        "train_seconds": train_seconds,
        # Wall clock of the whole loop: compilation, host input and checkpoints included.
        "images_per_sec": run_steps * config.batch_size / train_seconds if run_steps else None,
        "knn_top1": results.get("knn_top1"),
        "random_init_knn_top1": results.get("random_init_knn_top1"),
        "linear_top1": results.get("linear_top1"),
        "random_init_linear_top1": results.get("random_init_linear_top1"),
        "workdir": workdir,
    }


def markdown(row: dict, env: dict) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}"

    images_per_sec = "n/a" if row["images_per_sec"] is None else f"{row['images_per_sec']:,.0f}"
    resumed = row["steps_this_run"] != row["steps"]
    return "\n".join(
        [
            f"# SimCLR representation quality on CIFAR-10 ({env['device_count']} x "
            f"{env['device_kind']}, {env['platform']})",
            "",
            f"{env['date']} | jax {env['jax']} | {row['image_size']} px, batch {row['batch_size']},"
            f" {row['dtype']} | top-1 % on the 10,000 test images; features of the 50,000 train "
            "images (no augmentation) are the kNN bank (k=200) and the linear probe's data",
            "",
            "| method | backbone | width | epochs | steps | train s | images/s | kNN top-1 | "
            "kNN random init | linear top-1 | linear random init |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {row['method']} | {row['backbone']} | {row['width']:g} | {row['epochs']:.2f} | "
            f"{row['steps']} | {row['train_seconds']:,.0f} | {images_per_sec} | "
            f"{pct(row['knn_top1'])} | {pct(row['random_init_knn_top1'])} | "
            f"{pct(row['linear_top1'])} | {pct(row['random_init_linear_top1'])} |",
            "",
            "train s is the wall clock of the training loop (first-step compilation, input "
            "pipeline and checkpoints included); images/s is steps x batch / train s."
            + (
                f" This run resumed at step {row['steps'] - row['steps_this_run']}."
                if resumed
                else ""
            ),
            "",
        ]
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar_tar", default=DEFAULT_TAR, help="the CIFAR-10 JPEG tar.gz")
    parser.add_argument("--data_root", default="/tmp/ssl_jax_cifar10", help="unpacked here once")
    parser.add_argument(
        "--workdir",
        default=None,
        help="the run's workdir (default: a new /tmp/ssl_jax_quality/<time>); an existing one "
        "with checkpoints is resumed",
    )
    parser.add_argument("--model", default="resnet18", help="backbone, e.g. resnet18, resnet50")
    parser.add_argument("--width", type=float, default=1.0, help="backbone width multiplier")
    parser.add_argument("--batch_size", type=int, default=512, help="global batch")
    parser.add_argument("--epochs", type=float, default=100, help="budget in epochs")
    parser.add_argument("--total_steps", type=int, default=0, help="budget in steps (overrides)")
    parser.add_argument("--image_size", type=int, default=32, help="view side in pixels")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default=None, help="default: the preset's"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--temperature", type=float, default=None, help="NT-Xent temperature (preset: 0.5)"
    )
    parser.add_argument(
        "--warmup_epochs",
        type=float,
        default=None,
        help="preset: 10; lower it for budgets of a few epochs",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown file (default benchmarks/results/quality_<platform>.md); the raw numbers "
        "go beside it with a .json suffix",
    )
    args = parser.parse_args(argv)
    if args.total_steps < 0 or (args.epochs <= 0 and not args.total_steps):
        parser.error("give a positive --epochs or --total_steps")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    workdir = args.workdir or os.path.join("/tmp/ssl_jax_quality", time.strftime("%Y%m%d-%H%M%S"))
    seen_lines = len(metrics_lines(workdir))  # a resumed run appends to metrics.jsonl
    with exit_on_error():
        data_root = unpack_cifar10(args.cifar_tar, args.data_root)
        config = build_config(args, data_root)
        train.train_and_evaluate(config, workdir)
    if jax.process_index() != 0:  # only the lead host writes results.json
        return

    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    row = summarize(
        config,
        results,
        workdir=workdir,
        num_train=count_images(os.path.join(data_root, "train")),
        start_step=resumed_from(metrics_lines(workdir)[seen_lines:]),
    )
    device = jax.devices()[0]
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
    }
    table = markdown(row, env)
    print(table)
    output = args.output or os.path.join(
        ROOT, "benchmarks", "results", f"quality_{env['platform']}.md"
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write(table)
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump(
            {"environment": env, "args": vars(args), "result": row, "raw": results}, f, indent=2
        )
    print(f"wrote {output} and its .json", file=sys.stderr)


if __name__ == "__main__":
    main()
