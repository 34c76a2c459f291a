"""Image folders at scale: the scan at a first start vs a restart that finds it cached (issue 11).

`data.get_source("imagefolder:PATH", "train", cache_dir=...)` lists the folder, then decodes
every file once to drop the unreadable ones (the scan), unless `cache_dir` holds a scan of the
same listing. Measured here, each start in a fresh Python process (as a restarted job is), after
its imports:

    small    --small_files tiny JPEGs (8-32 px, 200 classes): get_source alone, first start
             (empty cache_dir) vs restart (the first start's cache_dir)
    large    --large_files JPEGs of 256 x 256 px (100 classes): get_source, then the first
             batch of `data.train_batches` with the SimCLR ImageNet recipe (configs/simclr.py,
             two 224 px views), global batch --batch, on this host; what a restarted run waits
             for before its first step, data side (the model's compile is not included)
    run      the command line on the large folder (configs/simclr.py:runlocal, a tiny model),
             killed at step 6 and run again: seconds from launch to the first step, with
             get_source's cache_dir forced to None or to <workdir>/cache
    reader   per-example reads of the 256 px JPEGs (read + decode, no augmentation) through the
             image-folder reader (a file that fails becomes a gray image, counted) vs a plain
             read_file + decode: what the read-time fallback costs

The folders are generated once under --dir (generation not timed) and reused. The first start
reads files the generator has just written, so they come from the page cache: a cold disk only
makes the first start slower. Each start's time is split into the listing (walking the folder),
the listing key (a stat per file + sha256), the decoding scan and the cache file's read/write.

On the 2-core CPU host (about 8 minutes when idle; generation ~2 minutes the first time):

    python benchmarks/folder_scan.py

The Markdown table is printed and written to --output (default
benchmarks/results/folder_scan_cpu.md), the raw numbers beside it as .json.
"""

import argparse
import datetime
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

T_START = time.perf_counter()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_DIR = os.path.join("/tmp", "ssl_jax_folder_scan")


# ------------------------------------------------------------------------------ folders


def _pool(sides: list[int], seed: int, quality: int) -> list[bytes]:
    """Distinct JPEGs: smooth gradients plus noise, so they compress like photos."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for side in sides:
        y, x = np.mgrid[:side, :side] / side
        base = np.stack([x, y, (x + y) / 2], -1) * rng.uniform(80, 255, 3) + rng.uniform(0, 60, 3)
        noise = rng.normal(0, 12, (side, side, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def make_folder(folder: str, *, classes: int, files: int, sides: list[int]) -> None:
    """folder/c<k>/<i>.jpg, `files` in all, contents cycled from a pool (decode cost is what
    matters, not distinct bytes). Skipped when folder/.done says it is already there."""
    done = os.path.join(folder, ".done")
    want = {"classes": classes, "files": files, "sides": sorted(set(sides))}
    if os.path.exists(done) and json.load(open(done)) == want:
        return
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating {files} JPEGs in {folder} ...", flush=True)
    pool = _pool(sides, seed=files, quality=90)
    per_class = files // classes
    for c in range(classes):
        sub = os.path.join(folder, f"c{c:03d}")
        os.makedirs(sub)
        for i in range(per_class):
            with open(os.path.join(sub, f"{i:05d}.jpg"), "wb") as f:
                f.write(pool[(c * per_class + i) % len(pool)])
    with open(done, "w") as f:
        json.dump(want, f)


# ------------------------------------------------------------------------------ one start


def child(args) -> dict:
    """One start in this (fresh) process: get_source (+ the first batch), timed in parts."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as `python -m ssl_jax.main`
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import tensorflow as tf

    from ssl_jax import data, methods
    from ssl_jax.data.sources import imagefolder
    from ssl_jax.step import check_recipes

    tf.config.set_visible_devices([], "GPU")
    result = {"imports_s": time.perf_counter() - T_START}
    parts = {
        "listing_s": "_labelled_listing",
        "key_s": "_listing_key",
        "decode_scan_s": "_check_readable",
        "cache_read_s": "_load_scan",
        "cache_write_s": "_save_scan",
    }

    def timed(f, part):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                result[part] += time.perf_counter() - t

        return wrapper

    for part, name in parts.items():  # time each stage of get_source where it is called
        result[part] = 0.0
        setattr(imagefolder, name, timed(getattr(imagefolder, name), part))

    t = time.perf_counter()
    source = data.get_source(f"imagefolder:{args.child}", "train", cache_dir=args.cache)
    result["get_source_s"] = time.perf_counter() - t
    result["examples"] = source.num_examples
    if args.first_batch:
        spec = importlib.util.spec_from_file_location("simclr", f"{ROOT}/configs/simclr.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(None)  # the ImageNet recipe
        recipes = [config.augment[n] for n in check_recipes(methods.get_method(config), config)]
        t = time.perf_counter()
        batches = data.train_batches(source, recipes=recipes, global_batch=args.batch, seed=0)
        batch = next(batches)
        result["first_batch_s"] = time.perf_counter() - t
        result["batch_shape"] = list(batch["views"][0].shape)
    result["total_s"] = time.perf_counter() - T_START
    return result


def reader_child(args) -> dict:
    """Read + decode throughput, the image-folder reader vs a plain one, interleaved."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import dataclasses

    import numpy as np
    import tensorflow as tf

    from ssl_jax import data, methods
    from ssl_jax.data.sources.base import decode_rgb
    from ssl_jax.step import check_recipes

    tf.config.set_visible_devices([], "GPU")
    source = data.get_source(f"imagefolder:{args.reader}", "train", file_names=True)
    paths_t = tf.constant(source.file_names)

    def plain(index):
        return decode_rgb(tf.io.read_file(tf.gather(paths_t, index)))

    def guarded(index):
        return source.read(index)[0]

    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1  # as pipeline.py

    def rate(read) -> tuple[float, float]:
        """(examples/s of wall time, CPU us per example: all threads of this process)."""
        n = args.reads
        ds = tf.data.Dataset.range(n).map(read, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda x: tf.shape(x)).batch(256).with_options(options)
        t, cpu = time.perf_counter(), time.process_time()
        for _ in ds.as_numpy_iterator():
            pass
        return n / (time.perf_counter() - t), (time.process_time() - cpu) / n * 1e6

    rates = {"plain": [], "folder_reader": []}
    rate(plain)  # warm up: thread pools, page cache
    for _ in range(args.rounds):
        for name, read in (("plain", plain), ("folder_reader", guarded)):
            rates[name].append([float(np.round(v, 1)) for v in rate(read)])

    # The same two readers under the SimCLR ImageNet recipe (two 224 px views), as in training.
    spec = importlib.util.spec_from_file_location("simclr", f"{ROOT}/configs/simclr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(None)
    recipes = [config.augment[n] for n in check_recipes(methods.get_method(config), config)]
    labels_t = tf.constant(source.labels)
    plain_source = dataclasses.replace(
        source, reader=lambda index: (plain(index), tf.gather(labels_t, index))
    )

    def pipeline_cpu_ms(s) -> float:
        """CPU ms per example of train_batches, 6 batches of --batch after 2 warm-up ones."""
        batches = data.train_batches(s, recipes=recipes, global_batch=args.batch, seed=0)
        next(batches), next(batches)
        cpu = time.process_time()
        for _ in range(6):
            next(batches)
        return round((time.process_time() - cpu) / (6 * args.batch) * 1e3, 3)

    rates["pipeline_plain"], rates["pipeline_folder_reader"] = [], []
    for _ in range(3):
        rates["pipeline_plain"].append(pipeline_cpu_ms(plain_source))
        rates["pipeline_folder_reader"].append(pipeline_cpu_ms(source))
    assert source.reader.failed_reads == 0
    return rates


# `python -m ssl_jax.main` with get_source's cache_dir forced: <workdir>/cache, or None (every
# start decodes everything, as before the cache), whatever train.py itself passes.
RUN_LAUNCHER = """
import os, sys
from ssl_jax import data
workdir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir="))
cache_dir = os.path.join(workdir, "cache") if os.environ["SCAN_CACHE"] == "1" else None
get_source = data.get_source
data.get_source = lambda *args, **kwargs: get_source(*args, **{**kwargs, "cache_dir": cache_dir})
from absl import app
from ssl_jax import main
app.run(main.main)
"""


def time_to_first_step(folder: str, workdir: str, cache: bool, kill_at: int | None) -> float:
    """Seconds from launching the command line to its first progress line; with kill_at, the
    process is then killed (SIGKILL) at the progress line of that step."""
    cmd = [sys.executable, "-c", RUN_LAUNCHER, "--config=configs/simclr.py:runlocal",
           f"--workdir={workdir}", f"--config.dataset=imagefolder:{folder}",
           "--config.total_steps=100", "--config.checkpoint_every_steps=2"]  # fmt: skip
    env = dict(os.environ, SCAN_CACHE=str(int(cache)), TF_CPP_MIN_LOG_LEVEL="2")
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    first = None
    for line in proc.stdout:
        if line.startswith("step "):  # "step 5/100 | epoch ..."
            first = first or time.perf_counter() - t
            if kill_at is None or line.startswith(f"step {kill_at}/"):
                break
    proc.kill()
    proc.wait()
    if first is None:
        raise RuntimeError(f"no progress line from {' '.join(cmd[3:])}")
    return first


def run_child(*flags: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *flags]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ report


def _s(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def table(results: dict, args) -> str:
    cols = ["listing_s", "key_s", "decode_scan_s", "cache_read_s", "cache_write_s"]
    lines = [
        "| folder | start | get_source s | listing | key | decode scan | cache r/w | "
        "first batch s | get_source + first batch s | imports s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("small", "large"):
        if name not in results:
            continue
        for start in ("first", "restart"):
            runs = results[name][start]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith("_s")}
            first_batch = med.get("first_batch_s")
            data_path = med["get_source_s"] + (first_batch or 0)
            lines.append(
                f"| {name}: {runs[0]['examples']:,} JPEGs | {start} | {_s(med['get_source_s'])} | "
                + " | ".join(_s(med[c]) for c in cols[:3])
                + f" | {_s(med['cache_read_s'])} / {_s(med['cache_write_s'])} | "
                + (f"{_s(first_batch)} | {_s(data_path)}" if first_batch else "- | -")
                + f" | {_s(med['imports_s'])} |"
            )
    out = "\n".join(lines)
    for name in ("small", "large"):
        if name in results:
            first, restart = (results[name][s] for s in ("first", "restart"))
            if name == "large":
                what = "get_source + first batch"
                f, r_ = (
                    statistics.median(r["get_source_s"] + r["first_batch_s"] for r in runs)
                    for runs in (first, restart)
                )
            else:
                what = "get_source"
                f, r_ = (
                    statistics.median(r["get_source_s"] for r in runs) for runs in (first, restart)
                )
            tf_, tr = (statistics.median(r["total_s"] for r in runs) for runs in (first, restart))
            out += (
                f"\n\n{name}: restart / first start, {what}: {_s(r_)} s / {_s(f)} s = "
                f"{r_ / f:.3f}; from process start (imports included): {_s(tr)} s / {_s(tf_)} s "
                f"= {tr / tf_:.3f}"
            )
    if "run" in results:
        out += (
            "\n\nrun: `python -m ssl_jax.main --config=configs/simclr.py:runlocal "
            "--config.dataset=imagefolder:LARGE --config.total_steps=100 "
            "--config.checkpoint_every_steps=2` (ResNet-18 x0.125 at 16 px, batch 32), killed "
            "(SIGKILL) at step 6 and run again on the same workdir; seconds from launch to the "
            "first progress line (imports, get_source, model, compile or the persistent "
            "compilation cache, checkpoint restore, first step):\n\n"
            "| get_source cache_dir | first start s | restart s | restart / first |\n"
            "|---|---|---|---|"
        )
        for mode, label in (("no_cache", "None (before the cache)"), ("cache", "<workdir>/cache")):
            first, restart = results["run"][mode]
            out += f"\n| {label} | {_s(first)} | {_s(restart)} | {restart / first:.3f} |"
    if "reader" in results:
        rates = results["reader"]
        (p, pc), (g, gc) = (
            [statistics.median(r[i] for r in rates[k]) for i in (0, 1)]  # examples/s, CPU us
            for k in ("plain", "folder_reader")
        )
        out += (
            f"\n\nreader: read + decode of 256 px JPEGs, medians of {args.rounds} interleaved "
            f"rounds of {args.reads} reads: plain read_file + decode {p:.0f} examples/s, "
            f"{pc:.0f} CPU us each; the image-folder reader (decode inside a one-element "
            f"tf.data pipeline, gray fallback) {g:.0f} examples/s, {gc:.0f} CPU us each "
            f"({gc - pc:+.0f} us, {100 * (gc / pc - 1):+.0f}% CPU per example). In the "
            f"SimCLR ImageNet pipeline (train_batches, two 224 px views, batch {args.batch}, "
            "medians of 3 interleaved rounds of 6 batches): "
            f"{statistics.median(rates['pipeline_plain']):.2f} CPU ms per example with the "
            f"plain reader, {statistics.median(rates['pipeline_folder_reader']):.2f} with the "
            "image-folder reader"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=DEFAULT_DIR, help="where the folders are generated")
    parser.add_argument("--small_files", type=int, default=200_000)
    parser.add_argument("--large_files", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64, help="global batch of the first batch")
    parser.add_argument("--repeats", type=int, default=1, help="first start + restart pairs")
    parser.add_argument("--reads", type=int, default=3000, help="reads per reader round")
    parser.add_argument("--rounds", type=int, default=5, help="reader rounds (interleaved)")
    parser.add_argument("--skip", default="", help="comma list of small,large,run,reader to skip")
    parser.add_argument("--output", default=None)
    # Internal: one start in a child process.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reader", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--first_batch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.reader:
        print(json.dumps(reader_child(args)))
        return

    skip = set(filter(None, args.skip.split(",")))
    small, large = os.path.join(args.dir, "small"), os.path.join(args.dir, "large")
    if "small" not in skip:
        make_folder(small, classes=200, files=args.small_files, sides=list(range(8, 33)))
    if not {"large", "run", "reader"} <= skip:
        make_folder(large, classes=100, files=args.large_files, sides=[256] * 64)
    load_before = os.getloadavg()[0]
    results = {}
    for r in range(args.repeats):
        for name, folder, extra in (("small", small, []), ("large", large, ["--first_batch"])):
            if name in skip:
                continue
            cache = os.path.join(args.dir, f"cache_{name}")
            shutil.rmtree(cache, ignore_errors=True)
            results.setdefault(name, {"first": [], "restart": []})
            for start in ("first", "restart"):
                flags = ["--child", folder, "--cache", cache, "--batch", str(args.batch), *extra]
                results[name][start].append(run_child(*flags))
                print(f"{name} {start} (repeat {r}): {results[name][start][-1]}", flush=True)
    if "run" not in skip:
        results["run"] = {}
        for cache in (False, True):  # a fresh workdir each: first start, killed, restarted
            workdir = os.path.join(args.dir, f"run_{'cache' if cache else 'no_cache'}")
            shutil.rmtree(workdir, ignore_errors=True)
            first = time_to_first_step(large, workdir, cache, kill_at=6)
            restart = time_to_first_step(large, workdir, cache, kill_at=None)
            results["run"]["cache" if cache else "no_cache"] = [first, restart]
            print(f"run cache={cache}: first {first:.1f} s, restart {restart:.1f} s", flush=True)
    if "reader" not in skip:
        flags = ["--reader", large, "--reads", str(args.reads), "--rounds", str(args.rounds)]
        results["reader"] = run_child(*flags)
        print(f"reader: {results['reader']}", flush=True)
    load_after = os.getloadavg()[0]

    text = table(results, args)
    when = datetime.date.today().isoformat()
    cpu = f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
    header = (
        f"# Image-folder scan: first start vs restart with the cached scan\n\n"
        f"Measured {when} with `python benchmarks/folder_scan.py` on {cpu}, "
        f"load average {load_before:.1f} before / {load_after:.1f} after. The machine was "
        "shared with several other agents' builds and tests at the same time, so every time "
        "here is an upper bound (the ratios are the point).\n\n"
        "Each start is a fresh process (TF and ssl_jax imported first; not in the data columns): "
        "`data.get_source('imagefolder:DIR', 'train', cache_dir=CACHE)`, for the large folder "
        "followed by the first batch of `data.train_batches` with the SimCLR ImageNet recipe "
        f"(configs/simclr.py, two 224 px views) at global batch {args.batch}. First start: "
        "CACHE empty (what every start did before the cache: list + decode everything, plus the "
        "listing key and the cache write). Restart: CACHE holds the first start's scan. "
        f"Medians of {args.repeats} pair(s). The files were just generated, so even the first "
        "start reads them from the page cache: on a cold disk it is slower, the restart not.\n\n"
    )
    notes = (
        "\n\nThe issue's target (a killed run over 20,000 JPEGs of 256 px reaches its first step "
        "again in under half the first start's time): the `large` ratios are the data side "
        "alone; the `run` table times the whole command line, where the restart also finds its "
        "step compiled in JAX's persistent compilation cache (<workdir>/compilation_cache) in "
        "both rows, so the difference between the rows is the scan. "
        "The reader's extra CPU per example is small next to the SimCLR augmentations at "
        "224 px (the pipeline numbers of the reader line).\n"
    )
    doc = header + text + notes
    print("\n" + doc)
    output = args.output or os.path.join(ROOT, "benchmarks", "results", "folder_scan_cpu.md")
    with open(output, "w") as f:
        f.write(doc)
    with open(output.removesuffix(".md") + ".json", "w") as f:
        json.dump({"date": when, "args": vars(args), "results": results}, f, indent=1)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
