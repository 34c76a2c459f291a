"""Two pictures to look at first: the views training sees, and what the encoder learned.

    python -m ssl_jax.visualize WORKDIR       # a pretraining workdir; writes both PNGs into it

augmentations.png  rows: the first train images of the run's first batch; columns: the evaluation
                   view (augment.eval_view), then one view per entry of config.views, made by the
                   training input pipeline itself, so they are the very views training saw.
embedding.png      a 2-D t-SNE (scikit-learn) of the exported encoder's test-split features,
                   coloured by label: classes that form their own islands are the ones kNN and the
                   linear probe can tell apart.

Both are drawn with PIL alone and are the same for the same seed.
"""

import argparse
import io
import json
import math
import os

# As in main.py: no TensorFlow start-up chatter, and oneDNN off so the views are rounded exactly
# as in a run launched from main.py.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from ssl_jax import checkpoint, data, fileio, parallel  # noqa: E402
from ssl_jax.errors import UserError, exit_on_error  # noqa: E402
from ssl_jax.evaluate import features as features_lib  # noqa: E402

AUGMENTATIONS_FILE = "augmentations.png"
EMBEDDING_FILE = "embedding.png"
MIN_CELL = 96  # small images are enlarged by a whole factor to at least this side, nearest pixel
GAP = 2  # white pixels between the cells of the grid
HEADER = 16  # the strip of column labels above the grid
EMBEDDING_SIZE = (1000, 800)  # (width, height): a square plot, then the legend column
# Tableau's 10 colours, then their light partners (matplotlib's tab10 and tab20): distinguishable,
# and the first ten, the common case, are the strongest. Unlabelled points (-1) are black.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")  # fmt: skip


def save_augmentations(config, source, path: str, *, num_images: int = 8, seed=None) -> np.ndarray:
    """Writes the grid of train images and their views; returns the example indices (the rows).

    The views of an example depend only on (seed, epoch, index) (data/pipeline.py), so a batch of
    `num_images` from the training pipeline holds exactly the first rows of the run's first batch,
    with the views the run gave them.

    Args:
        config: a pretraining config (views, augment, image_size, seed).
        source: its train split, data.get_run_source(config, "train", workdir).
        path: the PNG to write.
        num_images: rows (fewer when the split is smaller).
        seed: the run's seed; None: config.seed.
    """
    names = list(config.views)
    recipes = [config.augment[name] for name in names]
    seed = config.seed if seed is None else seed
    rows = min(num_images, source.num_examples)
    batch = next(data.train_batches(source, recipes=recipes, global_batch=rows, seed=seed))
    image = lambda i: source.read(tf.constant(i, tf.int64))[0]
    originals = np.stack([data.eval_view(image(i), config.image_size) for i in batch["index"]])
    labels = ["original"] + [
        n if names.count(n) == 1 else f"{n} {v + 1}" for v, n in enumerate(names)
    ]
    _save_png(_grid([originals, *batch["views"]], labels), path)
    return batch["index"]


def _grid(columns: list[np.ndarray], labels: list[str]) -> Image.Image:
    """uint8 [R, S_c, S_c, 3] per column -> one image, every cell the same side."""
    side = max(images.shape[1] for images in columns)
    cell = side * math.ceil(MIN_CELL / side)
    pitch = cell + GAP
    size = (len(columns) * pitch - GAP, HEADER + len(columns[0]) * pitch - GAP)
    grid = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(grid)
    for c, (images, label) in enumerate(zip(columns, labels, strict=True)):
        _text(draw, (c * pitch + 1, 2), label, cell - 2)
        for r, image in enumerate(images):
            tile = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (c * pitch, HEADER + r * pitch))
    return grid


def save_embedding(
    features, labels, path: str, *, class_names=None, seed: int = 0, max_points: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Writes a 2-D t-SNE of the features, one colour per label, with a legend.

    Args:
        features: float [N, D].
        labels: int [N]; -1 is unlabelled.
        path: the PNG to write, EMBEDDING_SIZE pixels.
        class_names: the legend's name of each label (default: the label).
        seed: t-SNE's random state; the same seed gives the same picture.
        max_points: at most this many evenly spaced rows (2,000 take ~10 s on one core).

    Returns:
        (coordinates float [n, 2], the rows of `features` they belong to, int [n]).
    """
    features, labels = np.asarray(features, np.float32), np.asarray(labels).astype(np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
    # Every ceil(N / max_points)-th row, as evaluate/features.py subsamples a split.
    rows = np.arange(0, len(features), -(-len(features) // max(max_points, 1)))
    if len(rows) < 4:
        raise UserError(f"t-SNE needs at least 4 points, got {len(rows)}")
    x = features[rows]
    # kNN evaluation compares features by cosine similarity; on unit vectors t-SNE's Euclidean
    # neighbours are the same neighbours.
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    from sklearn.manifold import TSNE  # here: 2 s of imports (scipy) off every command's start
    from threadpoolctl import threadpool_limits

    perplexity = min(30.0, (len(x) - 1) / 3)  # the usual 30; sklearn wants it below n
    tsne = TSNE(perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # One OpenMP thread: the Barnes-Hut result depends on the thread count (so would differ from
    # machine to machine), and threads that wait for a busy core made it 4x slower on 2 cores.
    with threadpool_limits(1, user_api="openmp"):
        coords = tsne.fit_transform(x)
    _save_png(_scatter(coords, labels[rows], class_names), path)
    return coords, rows


def _scatter(coords: np.ndarray, labels: np.ndarray, class_names) -> Image.Image:
    width, height = EMBEDDING_SIZE
    image = Image.new("RGB", EMBEDDING_SIZE, "white")
    draw, margin = ImageDraw.Draw(image), 12
    lo, span = coords.min(0), np.ptp(coords, axis=0)
    # One scale for both axes: t-SNE's distances mean the same in every direction.
    scale = (height - 2 * margin) / max(span.max(), 1e-12)
    xy = (coords - lo) * scale + margin + ((height - 2 * margin) - span * scale) / 2
    colour = lambda c: "black" if c < 0 else PALETTE[c % len(PALETTE)]
    # A shuffled drawing order, so no class is always painted over the others.
    for i in np.random.default_rng(0).permutation(len(xy)):
        x, y = xy[i]
        draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=colour(labels[i]))

    left, room = height + 10, width - height - 20  # the legend column
    _text(draw, (left, margin), f"t-SNE of {len(xy)} points", room)
    classes = np.unique(labels)
    fits = (height - 2 * margin) // 16 - 2
    for row, c in enumerate(classes[:fits]):
        y = margin + 16 * (row + 1)
        draw.rectangle((left, y + 2, left + 9, y + 11), fill=colour(c))
        named = class_names is not None and 0 <= c < len(class_names)
        name = class_names[c] if named else "unlabelled" if c < 0 else str(c)
        _text(draw, (left + 14, y), name, room - 14)
    if len(classes) > fits or len(classes) > len(PALETTE):
        y = margin + 16 * (min(len(classes), fits) + 1)
        _text(draw, (left, y), f"{(classes >= 0).sum()} classes; colours repeat", room)
    return image


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    """Black text in PIL's default font, cut to `width` pixels."""
    font = ImageFont.load_default()
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-1]
    draw.text(xy, text, fill="black", font=font)


def _save_png(image: Image.Image, path: str) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    fileio.write_bytes(path, buffer.getvalue())


def visualize_workdir(workdir: str, *, max_points: int = 2000) -> None:
    """Both pictures of a pretraining workdir, written into it (the command line's work)."""
    workdir = fileio.absolute(workdir)
    config = _load_config(workdir)
    train_source = data.get_run_source(config, "train", workdir)
    path = fileio.join(workdir, AUGMENTATIONS_FILE)
    save_augmentations(config, train_source, path)
    print(f"Wrote {path}", flush=True)
    try:
        export, spec = checkpoint.find_export(workdir)
    except FileNotFoundError:
        raise UserError(
            f"{workdir} holds no exported encoder yet, so {EMBEDDING_FILE} cannot be "
            "drawn: finish the run first (rerun its command to resume it)"
        ) from None
    test_source = data.get_run_source(config, "test", workdir)
    if test_source is None:
        raise UserError(f"{config.dataset} has no test split to embed (add PATH/test/<class>/)")
    apply_fn, variables = checkpoint.load_encoder(export)
    mesh = parallel.make_mesh()
    # Features of only the rows save_embedding keeps (ImageNet's 50,000 would be 25x the work).
    test_source = features_lib.spaced(test_source, max_points)
    kwargs = dict(image_size=spec["image_size"], batch_size=features_lib.eval_batch(config, mesh))
    feats, labels = features_lib.extract_features(
        apply_fn, variables, test_source, mesh=mesh, **kwargs
    )
    path, names = fileio.join(workdir, EMBEDDING_FILE), test_source.class_names
    save_embedding(feats, labels, path, class_names=names, seed=config.seed, max_points=max_points)
    print(f"Wrote {path}", flush=True)


def _load_config(workdir: str) -> ml_collections.ConfigDict:
    path = fileio.join(workdir, "config.json")
    if not fileio.exists(path):
        raise UserError(
            f"{path} not found: pass a pretraining workdir (the --workdir of "
            "python -m ssl_jax.main), once its run has started"
        )
    try:
        values = json.loads(fileio.read_text(path))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read ({e}); rerun the run to rewrite it") from None
    if not isinstance(values, dict) or "views" not in values:
        raise UserError(
            f"{path} is not a pretraining config (an evaluation workdir?); pass the "
            "pretraining workdir itself"
        )
    return ml_collections.ConfigDict(values)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ssl_jax.visualize", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workdir", help="a pretraining workdir (the --workdir of ssl_jax.main)")
    parser.add_argument("--max_points", type=int, default=2000, help="test images in the t-SNE")
    args = parser.parse_args(argv)
    with exit_on_error():
        if args.max_points < 4:
            raise UserError(f"--max_points={args.max_points}: t-SNE needs at least 4 points")
        visualize_workdir(args.workdir, max_points=args.max_points)


if __name__ == "__main__":
    main()
