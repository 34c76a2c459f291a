"""What pretraining buys on CIFAR-10: every evaluation protocol on a SimCLR encoder and baselines.

One pretraining run (configs/simclr.py:cifar10 on the CIFAR-10 JPEG image folder, the budget
set by the flags below), then each protocol through the command line exactly as a user runs it,
on the pretrained encoder and on its baseline:

    kNN, linear `frozen_features`, linear `augmented`   configs/linear_eval.py   (random init)
    few-shot 1 / 5 / 10 labels per class                configs/fewshot.py       (random init)
    fine-tuning on 1%, 10% and 100% of the labels       configs/finetune.py      (from scratch)
    distillation of the 10% fine-tuned classifier       configs/distill.py
        into a student of the same architecture,
        from scratch on all the (unlabelled) images

Every run has its own workdir under --workdir; a run that already wrote its results.json is
skipped and one that was interrupted resumes, so rerunning the same command finishes the table.
At the end `python -m ssl_jax.report` of every workdir is printed and written to --output
(default benchmarks/results/protocols_cifar10_<platform>.md), with the commands that were run.

CPU budget (2 cores: 28 minutes, measured 2026-12-03): the defaults below. On an accelerator
give the papers' budgets, e.g. --pretrain_steps 0 --pretrain_epochs 1000 --width 1
--finetune_epochs 60,30,30 --finetune_batch 256,256,256.
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.quality import DEFAULT_TAR, unpack_cifar10  # noqa: E402

LABEL_FRACTIONS = (0.01, 0.1, 1.0)


def stages(args, data: str, workdir: str) -> list[tuple[str, list[str]]]:
    """(run name, command-line arguments after `python -m ssl_jax.main`) in run order."""
    dataset = f"--config.dataset=imagefolder:{data}"
    pretrained = os.path.join(workdir, "simclr")

    def run(name, config, *overrides):
        return name, [f"--config={os.path.join(ROOT, 'configs', config)}",
                      f"--workdir={os.path.join(workdir, name)}", dataset, *overrides]  # fmt: skip

    model = [f"--config.model.name={args.backbone}", f"--config.model.width={args.width}"]
    # A smoke run of the whole table: every trained stage stops after --max_steps steps.
    cap = [f"--config.total_steps={args.max_steps}"] if args.max_steps else []
    pretrain_budget = cap or (
        [f"--config.total_steps={args.pretrain_steps}"] if args.pretrain_steps
        else [f"--config.num_epochs={args.pretrain_epochs}"])  # fmt: skip
    out = [
        run(
            "simclr",
            "simclr.py:cifar10",
            *model,
            f"--config.batch_size={args.batch_size}",
            *pretrain_budget,
            f"--config.temperature={args.temperature}",
            f"--config.warmup_epochs={args.warmup_epochs}",
            "--config.eval_random_init=False",
            "--config.save_pictures=False",
        ),
    ]
    augmented = [f"--config.augmented.num_epochs={args.augmented_epochs}"]
    augmented += [flag.replace("--config.", "--config.augmented.") for flag in cap]
    # The random-init baseline needs the architecture: it reads it from the same export.
    for name, baseline in (("", []), ("_random", ["--config.random_init=True"])):
        base = [f"--config.pretrained={pretrained}", *baseline]
        out.append(run(f"linear{name}", "linear_eval.py:cifar10", *base, *augmented))
        out.append(run(f"fewshot{name}", "fewshot.py:cifar10", *base))
    for fraction, epochs, batch in zip(LABEL_FRACTIONS, args.finetune_epochs,
                                       args.finetune_batch, strict=True):  # fmt: skip
        percent = f"{fraction * 100:g}"
        common = [f"--config.label_fraction={fraction}", f"--config.num_epochs={epochs}",
                  f"--config.batch_size={batch}", *model, *cap]  # fmt: skip
        out.append(run(f"finetune_{percent}", "finetune.py:cifar10",
                       f"--config.pretrained={pretrained}", *common))  # fmt: skip
        out.append(run(f"scratch_{percent}", "finetune.py:cifar10", "--config.from_scratch=True",
                       *common))  # fmt: skip
    out.append(run("distill_10", "distill.py:cifar10",
                   f"--config.teacher={os.path.join(workdir, 'finetune_10')}", *model,
                   f"--config.num_epochs={args.distill_epochs}", *cap))  # fmt: skip
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/ssl_jax_protocols_cifar10")
    parser.add_argument(
        "--data_root",
        default="/tmp/ssl_jax_cifar10",
        help="where the CIFAR-10 image folder is (unpacked there if missing)",
    )
    parser.add_argument("--cifar_tar", default=DEFAULT_TAR)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch_size", type=int, default=256, help="pretraining batch")
    parser.add_argument("--pretrain_steps", type=int, default=700)
    parser.add_argument(
        "--pretrain_epochs",
        type=int,
        default=0,
        help="instead of --pretrain_steps (0: use the steps)",
    )
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--warmup_epochs", type=float, default=0.5)
    parser.add_argument("--augmented_epochs", type=int, default=2)
    parser.add_argument(
        "--finetune_epochs", default="30,10,2", help="epochs at 1%%, 10%% and 100%% of the labels"
    )
    parser.add_argument(
        "--finetune_batch",
        default="64,256,256",
        help="batch at 1%%, 10%% and 100%% of the labels (500 images at 1%%)",
    )
    parser.add_argument("--distill_epochs", type=int, default=2)
    parser.add_argument(
        "--max_steps",
        type=int,
        default=0,
        help="a smoke run: every trained stage stops after this many steps",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument("--note", default="", help="a line under the table's header")
    args = parser.parse_args(argv)
    args.finetune_epochs = [int(e) for e in args.finetune_epochs.split(",")]
    args.finetune_batch = [int(b) for b in args.finetune_batch.split(",")]
    if {len(args.finetune_epochs), len(args.finetune_batch)} != {len(LABEL_FRACTIONS)}:
        parser.error("--finetune_epochs and --finetune_batch take three values: 1%, 10%, 100%")
    data = unpack_cifar10(args.cifar_tar, args.data_root)
    os.makedirs(args.workdir, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    timings = {}
    todo = stages(args, data, args.workdir)
    for i, (name, cli) in enumerate(todo):
        path = os.path.join(args.workdir, name)
        if os.path.exists(os.path.join(path, "results.json")):
            print(f"[{i + 1}/{len(todo)}] {name}: done earlier", flush=True)
            continue
        command = [sys.executable, "-m", "ssl_jax.main", *cli]
        print(f"[{i + 1}/{len(todo)}] {name}: {shlex.join(command[1:])}", flush=True)
        start = time.time()
        with open(os.path.join(args.workdir, f"{name}.log"), "a") as log:
            proc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        timings[name] = time.time() - start
        if proc.returncode:
            sys.exit(f"{name} failed (exit {proc.returncode}); see {args.workdir}/{name}.log")
        print(f"    {timings[name]:.0f} s", flush=True)
    report = subprocess.run(
        [sys.executable, "-m", "ssl_jax.report",
         *(os.path.join(args.workdir, name) for name, _ in todo)],  # fmt: skip
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    output = args.output or os.path.join(ROOT, "benchmarks", "results",
                                         "protocols_cifar10_cpu.md")  # fmt: skip
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    lines = [
        "# Evaluation protocols on CIFAR-10: a SimCLR encoder against its baselines",
        "",
        f"{stamp} | `python benchmarks/protocols_table.py "
        f"{shlex.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        *([args.note, ""] if args.note else []),
        report.stdout.strip(),
        "",
        "Commands (each `python -m ssl_jax.main` plus):",
        "",
        *(f"- {name}: `{shlex.join(cli)}`" for name, cli in todo),
        "",
    ]
    with open(output, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump({"stages": dict(todo), "seconds_this_invocation": timings}, f, indent=1)
    print(report.stdout)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
