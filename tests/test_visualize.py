"""ssl_jax.visualize: the augmentation grid shows exactly the views training sees, the t-SNE picture
keeps separate clusters apart and is the same for a seed, and the command line writes both."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageColor

from configs import simclr
from ssl_jax import checkpoint, data, visualize
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import pipeline
from ssl_jax.models import ResNet

SEED = 3


@pytest.fixture(scope="module")
def train_source():
    return data.get_source("demo", "train")


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def test_augmentation_grid_is_the_eval_view_then_the_training_views(tmp_path, train_source):
    config = simclr.get_config("runlocal")  # two 16 px views of 32 px images
    rows, path = 4, str(tmp_path / "augmentations.png")
    index = visualize.save_augmentations(config, train_source, path, num_images=rows, seed=SEED)
    grid = np.asarray(Image.open(path).convert("RGB"))

    factor = visualize.MIN_CELL // config.image_size  # 6: 16 px -> 96 px cells
    cell, pitch, cols = config.image_size * factor, config.image_size * factor + visualize.GAP, 3
    assert grid.shape == (
        visualize.HEADER + rows * pitch - visualize.GAP,
        cols * pitch - visualize.GAP,
        3,
    )

    def tile(r, c):
        top = visualize.HEADER + r * pitch
        return grid[top : top + cell, c * pitch : c * pitch + cell]

    # The rows open epoch 0 of a run with this seed, and their views are the ones the trainer's
    # own call (its batch of 32) gives them.
    np.testing.assert_array_equal(
        index, pipeline.epoch_permutation(SEED, 0, train_source.num_examples)[:rows]
    )
    recipes = [config.augment[name] for name in config.views]
    first = next(
        data.train_batches(train_source, recipes=recipes, global_batch=config.batch_size, seed=SEED)
    )
    np.testing.assert_array_equal(first["index"][:rows], index)
    for r, i in enumerate(index):
        image, _ = train_source.read(tf.constant(i, tf.int64))
        original = upscale(data.eval_view(image, config.image_size).numpy(), factor)
        np.testing.assert_array_equal(tile(r, 0), original)
        for v in range(2):
            np.testing.assert_array_equal(tile(r, 1 + v), upscale(first["views"][v][r], factor))
            assert np.abs(tile(r, 1 + v).astype(int) - original).mean() > 5
    for c in range(cols):  # each column has its label
        assert (grid[: visualize.HEADER, c * pitch : c * pitch + cell] < 128).any()


def two_clusters(n=600, dim=32, seed=0):
    """Two Gaussian clusters in blocks (labels 0 then 1), far apart in angle."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    centres = 3.0 * rng.normal(size=(2, dim))
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_embedding_separates_clusters_and_is_deterministic(tmp_path):
    features, labels = two_clusters()
    paths = [str(tmp_path / f"embedding{k}.png") for k in range(2)]
    coords, rows = visualize.save_embedding(
        features, labels, paths[0], class_names=("near", "far"), seed=0, max_points=300
    )
    # 600 rows, at most 300 points: every second row.
    np.testing.assert_array_equal(rows, np.arange(0, 600, 2))
    assert coords.shape == (300, 2)
    kept = labels[rows]
    centroids = np.stack([coords[kept == c].mean(0) for c in (0, 1)])
    nearest = np.argmin(((coords[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == kept).mean() > 0.95

    image = Image.open(paths[0]).convert("RGB")
    assert image.size == visualize.EMBEDDING_SIZE
    plot = np.asarray(image)[:, : visualize.EMBEDDING_SIZE[1]]
    for c in (0, 1):  # both classes are drawn, in their palette colours
        assert (plot == ImageColor.getrgb(visualize.PALETTE[c])).all(-1).sum() > 1000

    again, _ = visualize.save_embedding(
        features, labels, paths[1], class_names=("near", "far"), seed=0, max_points=300
    )
    np.testing.assert_array_equal(again, coords)
    assert open(paths[0], "rb").read() == open(paths[1], "rb").read()


def test_cli_without_config_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize.main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "config.json" in err[0] and "--workdir" in err[0]


def test_cli_writes_both_pictures_of_a_workdir(tmp_path, capsys):
    """A workdir as a run leaves it: config.json, then export/ (here a random encoder)."""
    config = simclr.get_config("runlocal")
    workdir = str(tmp_path)
    workdir_lib.write_config(config, workdir)

    # Before the export exists: the views are drawn, the embedding is a one-line error.
    with pytest.raises(SystemExit) as exit_info:
        visualize.main([workdir])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no exported encoder" in err[0] and "rerun" in err[0], err
    augmentations = os.path.join(workdir, visualize.AUGMENTATIONS_FILE)
    first_grid = open(augmentations, "rb").read()

    architecture = dict(depth=18, width=0.125, cifar_stem=True, dtype="float32")
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    # One jitted init: eagerly, each of its ops compiles on its own (8 s here).
    init = jax.jit(lambda key: ResNet(**architecture).init(key, dummy, train=False))
    variables = init(jax.random.key(0))
    spec = {"architecture": architecture, "image_size": config.image_size}
    checkpoint.export_encoder(os.path.join(workdir, "export"), spec=spec, variables=variables)

    visualize.main([workdir, "--max_points=200"])
    assert "embedding.png" in capsys.readouterr().out
    with Image.open(os.path.join(workdir, visualize.EMBEDDING_FILE)) as image:
        assert image.size == visualize.EMBEDDING_SIZE
    # The grid depends only on the config (its seed): the rerun drew the same picture.
    assert open(augmentations, "rb").read() == first_grid
