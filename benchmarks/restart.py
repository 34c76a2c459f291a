"""How long a preempted run takes to train again: restart time with and without the compilation
cache (issue 11: "a restart does not pay the compile again").

For each model, one command line run (`python -m ssl_jax.main`, the SimCLR runlocal preset, 8
simulated CPU devices) is started in a fresh workdir, sent SIGTERM once its first step is logged,
and started again twice: with the persistent compilation cache in its workdir (the default) and
with `--config.compilation_cache_dir=off`. Each start is timed from launch to its first logged
step, which includes start-up, data loading, restoring the checkpoint and compiling (or loading)
the train step.

    python benchmarks/restart.py            # about 3-6 minutes on 2 cores

The Markdown table is printed and written to --output (default benchmarks/results/restart_cpu.md).
"""

import argparse
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "simclr.py")
MODELS = {
    "ResNet-18 x0.125, 16 px, batch 32 (runlocal)": [],
    "ResNet-50 x1, 64 px, batch 32": [
        "--config.model.name=resnet50",
        "--config.model.width=1.0",
        "--config.image_size=64",
    ],  # fmt: skip
}


def start(workdir: str, extra: list[str], log_path: str) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")  # fmt: skip
    cmd = [sys.executable, "-m", "ssl_jax.main", f"--config={CONFIG}:runlocal",
           f"--workdir={workdir}", "--config.total_steps=1000", *extra]  # fmt: skip
    log = open(log_path, "w")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=log), time.time()


def _steps_logged(metrics: str) -> int:
    return sum('"loss"' in line for line in open(metrics))  # not the resume events


def seconds_to_next_step(proc, started: float, metrics: str, lines_before: int) -> float:
    while proc.poll() is None:
        if os.path.exists(metrics) and _steps_logged(metrics) > lines_before:
            return time.time() - started
        time.sleep(0.05)
    raise RuntimeError(f"the run ended with status {proc.returncode} before its first step")


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=600)
    if code != 75:
        raise RuntimeError(f"expected exit status 75 after SIGTERM, got {code}")


def measure(extra: list[str], scratch: str) -> dict:
    """{start: (seconds to the first logged step, seconds of the step after it)}."""
    workdir = os.path.join(scratch, "run")
    metrics = os.path.join(workdir, "metrics.jsonl")
    log = os.path.join(scratch, "log.txt")
    out = {}
    no_cache = ["--config.compilation_cache_dir=off"]
    for name, flag in (("first start", []), ("restart, cache", []),
                       ("restart, no cache", no_cache)):  # fmt: skip
        steps = _steps_logged(metrics) if os.path.exists(metrics) else 0
        proc, t0 = start(workdir, extra + flag, log)
        first = seconds_to_next_step(proc, t0, metrics, steps)
        second = seconds_to_next_step(proc, t0, metrics, steps + 1)
        out[name] = (first, second - first)
        stop(proc)
    shutil.rmtree(workdir)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results",
                                                         "restart_cpu.md"))  # fmt: skip
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, extra in MODELS.items():
            times = measure(extra, scratch)
            rows.append((name, times))
            print(name, times, flush=True)
    load = os.getloadavg()[0]
    lines = [
        f"# Restart time after SIGTERM ({datetime.date.today()}, {os.cpu_count()} CPU cores, "
        f"load average {load:.1f} at the end)",
        "",
        "Seconds from launch to the first logged step (start-up, data, restore, compile or cache "
        "load, and the step itself); `one step`: the median time of the step after it. "
        "`python benchmarks/restart.py`.",
        "",
        "| model | first start | restart with the cache | restart without it | one step |",
        "|---|---|---|---|---|",
    ]
    for name, t in rows:
        step = statistics.median(v[1] for v in t.values())
        lines.append(f"| {name} | {t['first start'][0]:.1f} | {t['restart, cache'][0]:.1f} | "
                     f"{t['restart, no cache'][0]:.1f} | {step:.1f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
