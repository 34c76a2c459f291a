"""Host input-pipeline throughput: two views vs multi-crop, and by source, on one host (no model).

Issue 9: how much slower is the tf.data pipeline with multi-crop (2 x 224 + 6 x 96 px) than with
two views? Issue 11: how many examples/s, and per core, does a host get from each kind of source
(TFDS array_record read by index, TFDS held in memory, an image folder), to size a host? Each
setting's pipeline is built as `ssl_jax.train` builds it: the config from
configs/<method>.py, the recipes the method asks for (`methods.get_method(config)` and
`step.check_recipes`, global views then `num_local_views` of recipe `local`), the train split from
`data.get_source(config.dataset, "train")` and `data.train_batches(source, recipes=...,
global_batch=config.batch_size, seed=config.seed, start_step=0, process_index, process_count)`.
The batches stop on the host (uint8 numpy): nothing is put on a device and no model runs.

Settings:

    simclr          configs/simclr.py (ImageNet recipe): 2 x 224 px
    simclr_mc6      the same with --config.num_local_views=6: + 6 x 96 px local crops (5-14%)
    dino            configs/dino.py (ImageNet preset): 2 x 224 (BYOL colour, blur 1.0 / 0.1,
                    solarisation 0 / 0.2, crops 40-100%) + 8 x 96 px (5-40%, blur 0.5)

Sources:

    imagefolder     ImageNet-like JPEGs (about 400 x 350 px, smooth gradients and blobs plus
                    noise, quality 90, ~40-60 KB each), generated once with PIL into --image_dir
                    and reused by later runs; read by path as `imagefolder:PATH` is in training
    array_record    the same JPEG files (bytes unchanged, labels from their class folders) as a
                    TFDS dataset prepared in the array_record format into --tfds_dir (once,
                    reused), read by index from disk, a batch of records per call
                    (ssl_jax/data/sources/tfds_random_access.py)
    tfds_memory     the same, prepared as TFRecord and loaded into RAM at start
                    (ssl_jax/data/sources/tfds_memory.py)
    demo            the bundled demo set (32 px JPEGs in memory), upscaled by the crop

Every (source, setting) is measured --repeats times, the settings interleaved (round r times
every setting before round r + 1 starts), each time in a fresh pipeline: --warmup untimed
batches (tf.data start-up: tracing, thread pools, the first file reads), then --batches timed
ones. The table gives medians; the .json keeps every repeat with the CPU seconds of the
process's threads and their run-queue wait (time runnable but waiting for a core, i.e. other
work on the host). A second table times the pipeline's stages alone (read + decode,
then one 224 or 96 px view with parts of the recipe switched off); --skip_breakdown drops them.

On the 2-core CPU host (about 3-4 minutes when it is idle; 9 minutes at a load average of 9):

    python benchmarks/pipeline.py

Issue 11's table (results/pipeline_sources_cpu.md), two views at 224 px from every source:

    python benchmarks/pipeline.py --settings simclr --sources array_record,tfds_memory,imagefolder \
        --skip_breakdown --output benchmarks/results/pipeline_sources_cpu.md

The Markdown table is printed and written to --output (default
benchmarks/results/pipeline_<platform>.md), the raw numbers beside it as .json.
"""

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The same TF settings as `python -m ssl_jax.main`, so the pipeline behaves as in training.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from benchmarks import torch_simclr  # noqa: E402
from ssl_jax import data, methods  # noqa: E402
from ssl_jax.data import augment  # noqa: E402
from ssl_jax.step import check_recipes  # noqa: E402

DEFAULT_IMAGE_DIR = os.path.join("/tmp", "ssl_jax_pipeline_images")
IMAGE_MANIFEST = "ssl_jax_pipeline_images.json"
# The TFDS sources: --image_dir's JPEGs as a TFDS dataset, one data_dir per file format.
TFDS_NAME = "ssl_jax_pipeline_jpegs"
TFDS_FORMATS = {"array_record": "array_record", "tfds_memory": "tfrecord"}
SOURCES = ("imagefolder", "array_record", "tfds_memory", "demo")

# name: (config file, preset, num_local_views override or None for the preset's own)
SETTINGS = {
    "simclr": ("simclr", None, 0),
    "simclr_mc6": ("simclr", None, 6),
    "dino": ("dino", None, None),
}
SETTING_LABELS = {
    "simclr": "SimCLR (ImageNet recipe)",
    "simclr_mc6": "SimCLR + multi-crop (num_local_views=6)",
    "dino": "DINO (ImageNet preset)",
}


# ------------------------------------------------------------------------------ source images


def make_image_folder(path: str, num_images: int, *, classes: int = 10, seed: int = 0) -> dict:
    """ImageNet-like JPEGs in path/<class>/*.JPEG, generated once and reused.

    Sizes are drawn around 400 x 350 (width 320-480, height 280-420). Content: a colour
    gradient, low-frequency blobs (bicubic-upscaled noise) and pixel noise, so that JPEG
    decoding does work comparable to a photograph's (ImageNet's train JPEGs average ~110 KB at
    about 400 x 350; these are ~40-60 KB at quality 90). A manifest records what was made; a
    folder with the same manifest is reused as is.
    """
    from PIL import Image

    want = {"num_images": num_images, "classes": classes, "seed": seed, "version": 1}
    manifest = os.path.join(path, IMAGE_MANIFEST)
    try:
        with open(manifest) as f:
            have = json.load(f)
        if {k: have.get(k) for k in want} == want:
            return have
    except (OSError, ValueError):
        pass
    print(f"generating {num_images} JPEGs in {path} ...", file=sys.stderr, flush=True)
    rng = np.random.default_rng(seed)
    total_bytes, pixels = 0, 0
    for i in range(num_images):
        w, h = int(rng.integers(320, 481)), int(rng.integers(280, 421))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
        fy, fx = (yy / h)[..., None], (xx / w)[..., None]
        image = (
            corners[0, 0] * (1 - fy) * (1 - fx)
            + corners[0, 1] * (1 - fy) * fx
            + corners[1, 0] * fy * (1 - fx)
            + corners[1, 1] * fy * fx
        )
        cells = int(rng.integers(4, 12))
        blobs = rng.uniform(-80, 80, (cells, cells, 3)).astype(np.float32)
        blobs = Image.fromarray(((blobs + 128).clip(0, 255)).astype(np.uint8)).resize(
            (w, h), Image.BICUBIC
        )
        image += np.asarray(blobs, np.float32) - 128
        image += rng.normal(0, 12, (h, w, 3)).astype(np.float32)
        folder = os.path.join(path, f"n{i % classes:08d}")
        os.makedirs(folder, exist_ok=True)
        file = os.path.join(folder, f"img_{i:05d}.JPEG")
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(file, quality=90)
        total_bytes += os.path.getsize(file)
        pixels += w * h
    have = dict(
        want,
        mean_kb=total_bytes / num_images / 1024,
        mean_megapixels=pixels / num_images / 1e6,
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    with open(manifest, "w") as f:
        json.dump(have, f, indent=2)
    return have


def prepare_tfds(image_dir: str, images: dict, data_dir: str, file_format: str) -> None:
    """--image_dir's JPEGs as TFDS dataset TFDS_NAME in `file_format`, prepared into data_dir.

    The files go in as they are (tfds.features.Image stores a path's bytes unchanged), labelled
    by their class folder, so the TFDS sources decode exactly the imagefolder source's JPEGs.
    Prepared once per image set: data_dir keeps a copy of the image manifest, and a different
    one (the images were regenerated) prepares it again.
    """
    manifest = os.path.join(data_dir, IMAGE_MANIFEST)
    try:
        with open(manifest) as f:
            if json.load(f) == images:
                return
    except (OSError, ValueError):
        pass
    shutil.rmtree(data_dir, ignore_errors=True)
    classes = sorted(
        e.name for e in os.scandir(image_dir) if e.is_dir() and not e.name.startswith(".")
    )
    files = [
        (os.path.join(image_dir, c, f), label)
        for label, c in enumerate(classes)
        for f in sorted(os.listdir(os.path.join(image_dir, c)))
    ]

    # Not registered: get_source opens it from data_dir's metadata (builder_from_files), as a
    # user's dataset prepared elsewhere.
    class SslJaxPipelineJpegs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=classes),
                    "file_name": tfds.features.Text(),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for path, label in files:
                name = os.path.relpath(path, image_dir)
                yield name, {"image": path, "label": label, "file_name": name}

    print(f"preparing {TFDS_NAME} ({file_format}) in {data_dir} ...", file=sys.stderr, flush=True)
    SslJaxPipelineJpegs(data_dir=data_dir, file_format=file_format).download_and_prepare()
    with open(manifest, "w") as f:
        json.dump(images, f, indent=2)


# ------------------------------------------------------------------------------ configs


def load_config(name: str, preset: str | None):
    """configs/<name>.py:get_config(preset), loaded by path (configs/ is not installed)."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def setting_config(setting: str, *, dataset: str, batch_size: int):
    """The setting's config with the benchmark's dataset and global batch."""
    file, preset, local = SETTINGS[setting]
    config = load_config(file, preset)
    config.dataset = dataset
    config.batch_size = batch_size
    if local is not None:
        config.num_local_views = local  # as --config.num_local_views=N
    return config


def trainer_recipes(config) -> list:
    """The recipes the trainer hands to train_batches (step.build_training's `recipes`)."""
    method = methods.get_method(config)
    return [config.augment[name] for name in check_recipes(method, config)]


def trainer_batches(config, source, recipes):
    """train_batches exactly as ssl_jax.train.run_loop calls it, for a run starting at step 0."""
    return data.train_batches(
        source,
        recipes=recipes,
        global_batch=config.batch_size,
        seed=config.seed,
        start_step=0,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


# ------------------------------------------------------------------------------ timing


# CPU seconds of this process's threads and their run-queue wait: torch_simclr.py's measure.
process_usage = torch_simclr.process_usage


def host_load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def time_iterator(make, *, warmup: int, batches: int, examples_per_batch: int) -> dict:
    """Builds an iterator with make(), skips `warmup` batches, times `batches` more."""
    start = time.perf_counter()
    iterator = make()
    first = None
    for i in range(warmup):
        next(iterator)
        if i == 0:
            first = time.perf_counter() - start
    usage = process_usage()
    load = host_load()
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    usage = process_usage(since=usage)
    iterator.close()  # stops tf.data's threads before the next measurement starts
    del iterator
    gc.collect()
    examples = examples_per_batch * batches
    return {
        "seconds": seconds,
        "examples_per_sec": examples / seconds,
        "first_batch_s": first,
        "cpu_s": usage["cpu_s"],
        "examples_per_cpu_s": examples / usage["cpu_s"] if usage["cpu_s"] else None,
        "runqueue_wait_s": usage["runqueue_wait_s"],
        "load_1min": load,
    }


def cores() -> int:
    """CPUs this process (and so tf.data's thread pool) may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------ stage breakdown


def breakdown_pipelines(source, batch: int, seed: int) -> dict:
    """Pipelines that time one stage at a time on `source` (not the trainer's; same options).

    read + decode only; then one view per example at 224 and at 96 px: crop + resize alone
    (no flip, colour, grey or blur), + flip, colour jitter and grey (SimCLR's recipe without the
    blur), and the full SimCLR recipe (+ Gaussian blur, p 0.5). Each row's CPU time per example
    less the previous row's is what that stage costs per view of that size.
    """

    def recipe(size, **values):
        return augment.parse_recipe(dict(size=size, **values))

    bare = dict(flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    stages = {"read + decode": None}
    for size in (224, 96):
        stages[f"1 x {size}: crop + resize"] = recipe(size, **bare)
        stages[f"1 x {size}: + flip, colour jitter, grey"] = recipe(size, blur_prob=0.0)
        stages[f"1 x {size}: + blur p 0.5 (full SimCLR recipe)"] = recipe(size)

    def make(view_recipe):
        def build():
            n = source.num_examples
            ds = tf.data.Dataset.range(np.iinfo(np.int64).max).map(lambda i: i % n)

            @tf.autograph.experimental.do_not_convert
            def one(index):
                image, _ = source.read(index)
                if view_recipe is None:  # the last pixel: the whole JPEG is decoded
                    return image[-1, -1]
                base_seed = tf.constant([seed, 0], tf.int64)
                key = tf.random.experimental.stateless_fold_in(base_seed, index)
                return augment.augment_view(image, key, view_recipe)

            ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.batch(batch, drop_remainder=True).prefetch(2)
            options = tf.data.Options()
            options.deterministic = True
            options.threading.max_intra_op_parallelism = 1
            ds = ds.with_options(options)
            return (b for b in ds.as_numpy_iterator())  # a generator, as train_batches

        return build

    return {name: make(r) for name, r in stages.items()}


# ------------------------------------------------------------------------------ report


def environment() -> dict:
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": jax.devices()[0].platform,
        "host_cpus": os.cpu_count(),
        "cores": cores(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "jax": jax.__version__,
        "process_count": jax.process_count(),
    }


def summarise(runs: list[dict]) -> dict:
    def med(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "examples_per_sec": med("examples_per_sec"),
        "examples_per_cpu_s": med("examples_per_cpu_s"),
        "first_batch_s": med("first_batch_s"),
        "runqueue_wait_frac": med("wait_frac"),
        "spread": (
            min(r["examples_per_sec"] for r in runs),
            max(r["examples_per_sec"] for r in runs),
        ),
    }


def _num(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def markdown(env: dict, rows: list[dict], stages: list[dict], args, images: dict | None) -> str:
    n_cores = env["cores"]
    if len(args.settings) == 1:
        title = f"Input-pipeline throughput by source, {SETTING_LABELS[args.settings[0]]}"
    else:
        title = "Input-pipeline throughput, two views vs multi-crop"
    lines = [
        f"# {title} ({env['platform']} host)",
        "",
        f"{env['date']} | tensorflow {env['tensorflow']}, jax {env['jax']} | {n_cores} cores "
        f"(process affinity; host CPUs {env['host_cpus']}) | global batch {args.batch_size}, "
        f"{args.batches} timed batches after {args.warmup} warm-up, median of {args.repeats} "
        "interleaved repeats | host uint8 batches, no model",
        "",
    ]
    runs = [run for row in rows + stages for run in row["runs"]]
    loads = [r["load_1min"] for r in runs if r.get("load_1min") is not None]
    waits = [r["wait_frac"] for r in runs if r.get("wait_frac") is not None]
    if loads or waits:
        lines += [
            "Host load while timing (other work shares these cores): 1-minute load average "
            f"median {_num(statistics.median(loads) if loads else None, '.2f')} "
            f"(range {_num(min(loads, default=None), '.2f')}-"
            f"{_num(max(loads, default=None), '.2f')}) on {n_cores} cores; this process's "
            "threads waited for a core (run queue) a median "
            f"{_num(100 * statistics.median(waits) if waits else None, '.0f')}% of "
            "the cores' time.",
            "",
        ]
    if args.note:
        lines += [args.note, ""]
    lines += [
        "| source | setting | views | view sizes | examples/s | views/s | examples/s per core | "
        "relative to two views | examples per CPU-s | first batch s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["median"]
        base = next(
            (
                x["median"]
                for x in rows
                if x["source"] == r["source"] and x["setting"] == args.baseline
            ),
            None,
        )
        rel = s["examples_per_sec"] / base["examples_per_sec"] if base else None
        rel_cpu = (
            s["examples_per_cpu_s"] / base["examples_per_cpu_s"]
            if base and s["examples_per_cpu_s"] and base["examples_per_cpu_s"]
            else None
        )
        lo, hi = s["spread"]
        lines.append(
            f"| {r['source']} | {SETTING_LABELS[r['setting']]} | {r['views']} | {r['view_sizes']} "
            f"| {s['examples_per_sec']:,.1f} ({lo:,.1f}-{hi:,.1f}) "
            f"| {s['examples_per_sec'] * r['views']:,.0f} "
            f"| {s['examples_per_sec'] / n_cores:,.1f} "
            f"| {'n/a' if rel is None else f'{rel:.2f}x'}"
            f"{'' if rel_cpu is None else f' (CPU-s: {rel_cpu:.2f}x)'} "
            f"| {_num(s['examples_per_cpu_s'], ',.1f')} "
            f"| {s['first_batch_s']:.1f} |"
        )
    lines += [
        "",
        "examples/s: images per second out of `train_batches` (each gives `views` views), median "
        "over the repeats (min-max in brackets); views/s = examples/s x views; per core = "
        f"examples/s / {n_cores}. relative to two views: examples/s over the same source's "
        f"`{args.baseline}` row (in brackets the same ratio of examples per CPU-second, which "
        "other work on the host disturbs much less). examples per CPU-s: examples over the CPU "
        "seconds of all the process's threads in the timed batches. first batch s: start-up, "
        "from building the pipeline to the first batch (tracing, thread pools, first reads).",
    ]
    opens = {r["source"]: (r["source_open_s"], r["dataset_examples"]) for r in rows}
    lines += [
        "",
        "Opening each source (`get_source`, once, before the timing; the image folder's scan "
        "decodes every file, tfds_memory loads the split into RAM): "
        + ", ".join(f"{name} {sec:.1f} s ({n:,} examples)" for name, (sec, n) in opens.items())
        + ".",
    ]
    if images:
        lines += [
            "",
            f"imagefolder: {images['num_images']} generated JPEGs in {images['classes']} class "
            f"folders, mean {images['mean_megapixels']:.3f} MP (about 400 x 350), "
            f"{images['mean_kb']:.0f} KB, read by path as `imagefolder:PATH` (after the first "
            "pass from the page cache). demo: the bundled 32 px JPEGs held in memory, upscaled "
            "by the crop.",
        ]
        if any(r["source"] in TFDS_FORMATS for r in rows):
            lines += [
                "",
                "array_record and tfds_memory: the same JPEG files as a TFDS dataset "
                f"(`{TFDS_NAME}`, bytes unchanged), prepared once as array_record and as TFRecord. "
                "array_record: read by example index from disk (`tfds_random_access.py`: one "
                "array_record read of the host's batch of records per call, then decoded and "
                "augmented in the tf.data graph; from the page cache after the first pass). "
                "tfds_memory: the TFRecord split loaded into RAM as encoded bytes at start "
                "(`tfds_memory.py`), then decoded and augmented alike.",
            ]
    if stages:
        lines += [
            "",
            f"## Stages alone ({stages[0]['source']}, batch {args.batch_size}, median of "
            f"{args.repeats})",
            "",
            "| stage | examples/s | CPU ms per example | CPU ms the stage adds per view | "
            "share of a 2 x 224 SimCLR example's CPU |",
            "|---|---|---|---|---|",
        ]

        def cpu_ms(stage):
            return 1000 / stage["median"]["examples_per_cpu_s"]

        decode_ms = cpu_ms(stages[0])
        full = [s for s in stages if s["stage"].startswith("1 x 224: + blur")]
        simclr_ms = decode_ms + 2 * (cpu_ms(full[0]) - decode_ms) if full else None
        previous_ms = 0.0
        for stage in stages:
            ms = cpu_ms(stage)
            if stage["stage"].endswith("crop + resize"):
                previous_ms = decode_ms
            adds = ms - previous_ms
            share = f"{100 * adds / simclr_ms:.0f}%" if simclr_ms else "n/a"
            lines.append(
                f"| {stage['stage']} | {stage['median']['examples_per_sec']:,.1f} | {ms:.2f} | "
                f"{adds:.2f} | {share} |"
            )
            previous_ms = ms
        lines += [
            "",
            "CPU ms per example: CPU seconds of all the process's threads per example. A stage "
            "adds its row's CPU time less the previous row's (crop + resize: less read + "
            "decode). share: that over the CPU time of a SimCLR example, estimated as read + "
            "decode + 2 x (full 224 view less read + decode).",
        ]
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"from {', '.join(SETTINGS)}"
    )
    parser.add_argument("--baseline", default="simclr", help="the two-view setting")
    parser.add_argument(
        "--sources",
        default="imagefolder,demo",
        help=f"comma-separated, from {', '.join(SOURCES)} (see the docstring)",
    )
    parser.add_argument("--image_dir", default=DEFAULT_IMAGE_DIR, help="generated JPEGs")
    parser.add_argument(
        "--tfds_dir",
        default=None,
        help="TFDS data_dirs of the array_record and tfds_memory sources (default: --image_dir "
        "with the suffix _tfds; not inside it, where they would be class folders)",
    )
    parser.add_argument("--num_images", type=int, default=1024, help="JPEGs to generate")
    parser.add_argument("--batch_size", type=int, default=64, help="global batch")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches (start-up)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument(
        "--skip_breakdown",
        action="store_true",
        help="no table of the stages alone (read + decode, crop, colour, blur)",
    )
    parser.add_argument("--note", default="", help="a line under the table's header")
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown file (default benchmarks/results/pipeline_<platform>.md); the raw "
        "numbers go beside it with a .json suffix",
    )
    args = parser.parse_args(argv)
    for name in ("batch_size", "batches", "warmup", "repeats", "num_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    args.settings = [s for s in args.settings.split(",") if s]
    args.sources = [s for s in args.sources.split(",") if s]
    for s in args.settings:
        if s not in SETTINGS:
            parser.error(f"unknown setting {s!r}; use {', '.join(SETTINGS)}")
    for s in args.sources:
        if s not in SOURCES:
            parser.error(f"unknown source {s!r}; use {', '.join(SOURCES)}")
    args.tfds_dir = args.tfds_dir or args.image_dir.rstrip("/") + "_tfds"
    if args.baseline not in args.settings:
        parser.error(f"--baseline {args.baseline} is not among --settings")
    if args.num_images < args.batch_size:
        parser.error("--num_images must be at least --batch_size")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    env = environment()
    output = args.output or os.path.join(
        ROOT, "benchmarks", "results", f"pipeline_{env['platform']}.md"
    )
    json_path = os.path.splitext(output)[0] + ".json"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)

    images = None
    datasets = {}  # source name -> (dataset, TFDS data_dir)
    if set(args.sources) & {"imagefolder", *TFDS_FORMATS}:
        images = make_image_folder(args.image_dir, args.num_images)
    for source_name in args.sources:
        if source_name == "imagefolder":
            datasets[source_name] = (f"imagefolder:{args.image_dir}", None)
        elif source_name in TFDS_FORMATS:
            data_dir = os.path.join(args.tfds_dir, TFDS_FORMATS[source_name])
            prepare_tfds(args.image_dir, images, data_dir, TFDS_FORMATS[source_name])
            datasets[source_name] = (TFDS_NAME, data_dir)
        else:
            datasets[source_name] = ("demo", None)

    # One Source per dataset (an image folder is scanned once), shared by its settings.
    cells = []
    for source_name, (dataset, data_dir) in datasets.items():
        opened = time.perf_counter()
        source = data.get_source(dataset, "train", data_dir)
        open_s = time.perf_counter() - opened
        expected_fetch = source_name == "array_record"  # the path the source name promises
        assert (source.fetch is not None) == expected_fetch, (source_name, source.name)
        for setting in args.settings:
            config = setting_config(setting, dataset=dataset, batch_size=args.batch_size)
            recipes = trainer_recipes(config)
            sizes = [int(r.size) for r in recipes]
            counts = {s: sizes.count(s) for s in dict.fromkeys(sizes)}
            cells.append(
                dict(
                    source=source_name,
                    setting=setting,
                    dataset_name=source.name,
                    dataset_examples=source.num_examples,
                    views=len(recipes),
                    view_sizes=" + ".join(f"{n} x {s}" for s, n in counts.items()),
                    recipes=[dict(r.items()) for r in recipes],
                    source_open_s=open_s,
                    make=(lambda c=config, s=source, r=recipes: trainer_batches(c, s, r)),
                    runs=[],
                )
            )
    stage_cells = []
    if not args.skip_breakdown and "imagefolder" in datasets:
        source = data.get_source(datasets["imagefolder"][0], "train")
        for stage, make in breakdown_pipelines(source, args.batch_size, seed=0).items():
            stage_cells.append(dict(source="imagefolder", stage=stage, make=make, runs=[]))

    n_cores = cores()
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for cell in cells + stage_cells:
            label = cell.get("stage") or cell["setting"]
            run = time_iterator(
                cell["make"],
                warmup=args.warmup,
                batches=args.batches,
                examples_per_batch=args.batch_size,
            )
            if run["runqueue_wait_s"] is not None:
                run["wait_frac"] = run["runqueue_wait_s"] / (run["seconds"] * n_cores)
            cell["runs"].append(run)
            print(
                f"[{time.perf_counter() - started:5.0f} s] repeat {repeat + 1}/{args.repeats} "
                f"{cell['source']:11s} {label:34s} {run['examples_per_sec']:7.1f} examples/s  "
                f"{run['examples_per_cpu_s'] or 0:6.1f} per CPU-s  load {run['load_1min']}",
                file=sys.stderr,
                flush=True,
            )

    rows, stages = [], []
    for cell in cells:
        cell.pop("make")
        cell["median"] = summarise(cell["runs"])
        rows.append(cell)
    for cell in stage_cells:
        cell.pop("make")
        cell["median"] = summarise(cell["runs"])
        stages.append(cell)

    table = markdown(env, rows, stages, args, images)
    print(table)
    with open(output, "w") as f:
        f.write(table)
    raw = {
        "environment": env,
        "args": vars(args),
        "images": images,
        "rows": rows,
        "stages": stages,
        "total_seconds": time.perf_counter() - started,
    }
    with open(json_path, "w") as f:
        json.dump(raw, f, indent=2, default=str)
    print(f"wrote {output} and its .json", file=sys.stderr)


if __name__ == "__main__":
    main()
