"""Tests for ssl_jax.data: augmentation statistics, determinism, sources (folder, demo, TFDS)."""

import io
import logging
import os
import socket

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from ssl_jax import data
from ssl_jax.data import augment, sources
from ssl_jax.errors import UserError

# Every random op off and the crop pinned to the whole (square) image: the view is just the resize.
PLAIN = dict(
    crop_area=(1.0, 1.0),
    crop_aspect=(1.0, 1.0),
    flip_prob=0.0,
    color_jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_prob=0.0,
)


def _views(image, recipe, n, start=0):
    """n views of one image through tf.data, seeds (0, start + i): uint8 [n, S, S, 3]."""
    image = tf.constant(image)

    def one(i):
        return augment.augment_view(image, tf.stack([tf.constant(0, tf.int64), i]), recipe)

    ds = tf.data.Dataset.range(start, start + n).map(one, num_parallel_calls=tf.data.AUTOTUNE)
    return np.concatenate(list(ds.batch(512).as_numpy_iterator()))


def _colourful(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _resized(image, size):
    resized = tf.image.resize(image, [size, size], method="bicubic")
    return tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8).numpy()


# ---------------------------------------------------------------- augmentations


@pytest.mark.parametrize("shape,size", [((32, 32), 32), ((5, 7), 16), ((40, 90), 24)])
def test_augment_view_shape_dtype(shape, size):
    recipe = ml_collections.ConfigDict(dict(size=size, blur_prob=0.5, solarize_prob=0.5))
    view = augment.augment_view(tf.constant(_colourful(*shape)), tf.constant([1, 2]), recipe)
    assert view.shape == (size, size, 3) and view.dtype == tf.uint8


def test_everything_off_gives_the_resized_input():
    square = _colourful(32, 32)
    view = augment.augment_view(square, tf.constant([3, 4]), dict(PLAIN, size=32))
    np.testing.assert_array_equal(view.numpy(), square)
    wide = _colourful(20, 30)  # aspect 1.5 pinned: the crop is the whole image
    recipe = dict(PLAIN, size=16, crop_aspect=(1.5, 1.5))
    view = augment.augment_view(wide, tf.constant([3, 4]), recipe)
    np.testing.assert_array_equal(view.numpy(), _resized(wide, 16))


def test_flip_fraction_matches_flip_prob():
    image = _colourful(8, 8)
    views = _views(image, dict(PLAIN, size=8, flip_prob=0.3), 2000)
    flipped = np.all(views == image[:, ::-1], axis=(1, 2, 3))
    unchanged = np.all(views == image, axis=(1, 2, 3))
    assert np.all(flipped ^ unchanged)  # each view is exactly one of the two
    assert abs(flipped.mean() - 0.3) < 0.04  # binomial sd 0.010


def test_grayscale_fraction_matches_grayscale_prob():
    views = _views(_colourful(8, 8), dict(PLAIN, size=8, grayscale_prob=0.2), 2000).astype(int)
    grey = np.all((views[..., 0] == views[..., 1]) & (views[..., 1] == views[..., 2]), axis=(1, 2))
    assert abs(grey.mean() - 0.2) < 0.035  # binomial sd 0.009


def test_color_jitter_fraction_and_range():
    image = _colourful(8, 8)
    recipe = dict(PLAIN, size=8, color_jitter_prob=0.8, color_jitter_strength=1.0)
    views = _views(image, recipe, 1000)
    changed = np.any(views != image, axis=(1, 2, 3))
    assert abs(changed.mean() - 0.8) < 0.05  # a jittered view all but never equals its input
    # Brightness alone (+-0.8) moves the mean a lot; the four ops together spread it widely.
    means = views[changed].reshape(changed.sum(), -1).mean(1)
    assert means.std() > 20


def test_solarize_and_blur():
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], [16, 1, 3])
    solar = augment.augment_view(ramp, tf.constant([0, 1]), dict(PLAIN, size=16, solarize_prob=1))
    assert solar.numpy().max() <= 128
    noise = _colourful(64, 64)  # kernel 7 x 7 at 64 px; sigma pinned so the blur is strong
    recipe = dict(PLAIN, size=64, blur_prob=1, blur_sigma=(1.5, 1.5))
    blurred = augment.augment_view(noise, tf.constant([0, 1]), recipe).numpy()
    tv = lambda x: np.abs(np.diff(x.astype(float), axis=1)).mean()
    assert tv(blurred) < 0.3 * tv(noise)
    assert abs(blurred.mean() - noise.mean()) < 1  # normalised kernel, reflect padding


def test_crop_areas_in_range_and_mean_matches_analytic():
    area, aspect, n = (0.08, 1.0), (3 / 4, 4 / 3), 4000

    def box(i):
        offset, size = augment.random_crop_box(
            tf.constant([1000, 1000, 3]), tf.stack([tf.constant(7, tf.int64), i]), area, aspect
        )
        return tf.concat([offset, size], 0)

    boxes = next(tf.data.Dataset.range(n).map(box).batch(n).as_numpy_iterator())  # [n, 4]
    h, w = boxes[:, 2].astype(float), boxes[:, 3].astype(float)
    areas, ratios = h * w / 1e6, w / h
    assert areas.min() >= 0.08 - 1e-3 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 - 5e-3 and ratios.max() <= 4 / 3 + 5e-3
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] + boxes[:, 2:] <= 1000)
    # TF samples the aspect r uniformly, then the height h uniformly between the heights giving the
    # min and max area, capped so the window fits (h <= 1 and w = r h <= 1). Then E[area | r] =
    # r E[h^2] = r (h1^3 - h0^3) / (3 (h1 - h0)); integrate over r.
    r = np.linspace(*aspect, 10001)
    h0 = np.sqrt(area[0] / r)
    h1 = np.minimum.reduce([np.sqrt(area[1] / r), np.ones_like(r), 1 / r])
    expected = np.mean(r * (h1**3 - h0**3) / (3 * (h1 - h0)))
    assert abs(areas.mean() - expected) < 0.015  # sd of the mean ~0.004


def test_crop_falls_back_to_centre_crop():
    # A 10:1 strip has no window with aspect in [3/4, 4/3] and area >= 0.5: take the centre square.
    offset, size = augment.random_crop_box(
        tf.constant([10, 100, 3]), tf.constant([0, 1]), (0.5, 1), (0.75, 4 / 3)
    )
    assert size.numpy().tolist() == [10, 13] and offset.numpy().tolist() == [0, 43]


def test_same_seed_same_view_and_eager_equals_tf_data():
    image = _colourful(40, 50)
    recipe = dict(size=24, blur_prob=0.5, solarize_prob=0.2, color_jitter_strength=0.5)
    in_graph = _views(image, recipe, 16)
    eager = np.stack(
        [augment.augment_view(image, tf.constant([0, i], tf.int64), recipe) for i in range(16)]
    )
    np.testing.assert_array_equal(eager, in_graph)
    assert len({v.tobytes() for v in in_graph}) == 16  # different seeds, different views


def test_recipe_validation():
    with pytest.raises(UserError, match="flip_probability"):
        augment.parse_recipe(dict(size=32, flip_probability=0.5))
    with pytest.raises(UserError, match="size"):
        augment.parse_recipe(dict(flip_prob=0.5))
    with pytest.raises(UserError, match="crop_area"):
        augment.parse_recipe(dict(size=32, crop_area=(0.5, 0.1)))


def test_eval_view_centre_crop():
    small = _colourful(32, 32)
    np.testing.assert_array_equal(augment.eval_view(small, 32).numpy(), small)
    big = _colourful(100, 80)  # shorter side 80 > 64: keep the centred 70 x 70 (0.875 * 80)
    np.testing.assert_array_equal(
        augment.eval_view(big, 35).numpy(), _resized(big[15:85, 5:75], 35)
    )


# Colour jitter with brightness alone, always applied: the explicit tuple overrides the strength
# (s = 1 would also jitter contrast, saturation and hue, and brightness by 0.8).
BRIGHTNESS_ONLY = dict(
    PLAIN, color_jitter_prob=1.0, color_jitter_strength=1.0, color_jitter=(0.4, 0.0, 0.0, 0.0)
)


def _flat(value, side=8):
    return np.full((side, side, 3), value, np.uint8)


def _levels(low, high, side=8):
    """Top half `low`, bottom half `high`: grey, so only brightness can change it."""
    return np.concatenate([_flat(low, side)[: side // 2], _flat(high, side)[side // 2 :]])


def test_color_jitter_tuple_overrides_strength():
    assert augment.jitter_strengths(augment.parse_recipe(dict(size=8))) == (0.8, 0.8, 0.8, 0.2)
    half = augment.parse_recipe(dict(size=8, color_jitter_strength=0.5))
    assert augment.jitter_strengths(half) == (0.4, 0.4, 0.4, 0.1)
    explicit = augment.parse_recipe(dict(size=8, color_jitter=[0.4, 0.4, 0.2, 0.1]))
    assert augment.jitter_strengths(explicit) == (0.4, 0.4, 0.2, 0.1)
    assert explicit.color_jitter == (0.4, 0.4, 0.2, 0.1)  # a list is stored as a tuple


def test_multiplicative_brightness_scales_by_a_uniform_factor():
    n = 1000
    recipe = dict(BRIGHTNESS_ONLY, size=8, brightness_mode="multiplicative")
    views = _views(_flat(100), recipe, n).astype(int)
    assert np.all(views == views[:, :1, :1, :1])  # still flat: one factor for every pixel
    values = views[:, 0, 0, 0]  # 100 x factor, rounded
    assert values.min() >= 60 and values.max() <= 140  # factor in [1 - 0.4, 1 + 0.4]
    assert values.min() <= 62 and values.max() >= 138  # and the whole range is reached
    # Factor ~ U(0.6, 1.4): mean 1 (sd of the mean 0.007), sd 0.8 / sqrt(12) = 0.231, and each
    # of 8 bins of width 0.1 holds 1/8 of the views (binomial sd 0.0105).
    factors = values / 100
    assert abs(factors.mean() - 1.0) < 0.03
    assert abs(factors.std() - 0.8 / np.sqrt(12)) < 0.02
    counts, _ = np.histogram(values, bins=8, range=(60, 140))
    np.testing.assert_allclose(counts / n, 1 / 8, atol=0.045)
    # A scale, not a shift: black stays black, and two grey levels keep their 1 : 2 ratio.
    assert np.all(_views(_flat(0), recipe, 200) == 0)
    two = _views(_levels(50, 100), recipe, 200).astype(int)
    low, high = two[:, 0, 0, 0], two[:, -1, 0, 0]
    assert np.all(np.abs(high - 2 * low) <= 1)
    assert high.min() < 65 and high.max() > 135


def test_additive_brightness_shifts_by_at_most_b():
    n = 600
    recipe = dict(BRIGHTNESS_ONLY, size=8, brightness_mode="additive")
    views = _views(_flat(128), recipe, n).astype(int)
    assert np.all(views == views[:, :1, :1, :1])
    shifts = views[:, 0, 0, 0] - 128  # 255 x U(-0.4, 0.4), rounded: within +-102
    assert np.abs(shifts).max() <= round(0.4 * 255)
    assert shifts.min() < -95 and shifts.max() > 95
    assert abs(shifts.mean()) < 8  # sd 204 / sqrt(12) = 58.9; sd of the mean 2.4
    # A shift, not a scale: two grey levels keep their difference, and black moves up whenever
    # the shift is positive (half the time), by up to 102.
    two = _views(_levels(110, 140), recipe, 200).astype(int)
    assert np.all(np.abs(two[:, -1, 0, 0] - two[:, 0, 0, 0] - 30) <= 1)
    black = _views(_flat(0), recipe, 300)
    lifted = np.any(black > 0, axis=(1, 2, 3))
    assert abs(lifted.mean() - 0.5) < 0.1  # binomial sd 0.029
    assert 90 < black.max() <= 102
    # additive is the default mode
    default = dict(BRIGHTNESS_ONLY, size=8)
    np.testing.assert_array_equal(_views(_flat(0), default, 100), black[:100])


def test_solarize_inverts_from_128_as_pil():
    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)  # 0..255
    v = ramp.astype(int)
    expected = np.where(v < 128, v, 255 - v)
    pil = np.asarray(ImageOps.solarize(Image.fromarray(ramp), threshold=128)).astype(int)
    np.testing.assert_array_equal(pil, expected)  # the reference: PIL inverts v >= 128
    recipe = dict(PLAIN, size=16, solarize_prob=1.0)
    solar = augment.augment_view(ramp, tf.constant([0, 1]), recipe).numpy().astype(int)
    assert np.abs(solar - expected).max() <= 1
    # At the threshold exactly: 127 is kept, 128 becomes 127, 255 becomes 0.
    assert solar[v == 127].tolist() == [127] * 3
    assert solar[v == 128].tolist() == [127] * 3
    assert solar[v == 255].tolist() == [0] * 3 and solar[v == 0].tolist() == [0] * 3
    # solarize_prob 0.2: a fifth of the views change, each either untouched or solarised.
    views = _views(ramp, dict(recipe, solarize_prob=0.2), 1000).astype(int)
    changed = np.any(views != v, axis=(1, 2, 3))
    assert np.all(np.abs(views[changed] - expected).max(axis=(1, 2, 3)) <= 1)
    assert abs(changed.mean() - 0.2) < 0.04  # binomial sd 0.013


@pytest.mark.parametrize(
    "values,fragments",
    [
        (dict(color_jitter=(0.4, 0.4, 0.2)), ["color_jitter", "(0.4, 0.4, 0.2)"]),
        (dict(color_jitter=(0.4, 0.4, 0.2, 0.1, 0.1)), ["color_jitter"]),
        (dict(color_jitter=(0.4, -0.1, 0.2, 0.1)), ["color_jitter", ">= 0"]),
        (dict(color_jitter=(0.4, 0.4, 0.2, 0.6)), ["color_jitter", "hue <= 0.5"]),
        (dict(brightness_mode="exponential"), ["exponential", "additive", "multiplicative"]),
        (dict(brightness_mode="Multiplicative"), ["brightness_mode"]),
    ],
)
def test_color_jitter_and_brightness_mode_validation(values, fragments):
    with pytest.raises(UserError) as info:
        augment.parse_recipe(dict(size=8, **values))
    for fragment in fragments:
        assert fragment in str(info.value)
    with pytest.raises(UserError):  # augment_view validates too
        augment.augment_view(_flat(0), tf.constant([0, 1]), dict(size=8, **values))


def test_color_jitter_valid_edges():
    for jitter in ((), (0, 0, 0, 0), (1.0, 1.0, 1.0, 0.5)):
        assert augment.parse_recipe(dict(size=8, color_jitter=jitter)).color_jitter == jitter


def test_byol_asymmetric_view_recipes():
    from configs import byol

    config = byol.get_config("imagenet")
    assert tuple(config.views) == ("view1", "view2")
    view1, view2 = (augment.parse_recipe(config.augment[name]) for name in config.views)
    assert (view1.blur_prob, view2.blur_prob) == (1.0, 0.1)
    assert (view1.solarize_prob, view2.solarize_prob) == (0.0, 0.2)
    for view in (view1, view2):  # the shared part: deepmind-research byol/utils/augmentations.py
        assert view.size == 224
        assert view.brightness_mode == "multiplicative"
        assert augment.jitter_strengths(view) == (0.4, 0.4, 0.2, 0.1)
        assert view.color_jitter_prob == 0.8 and view.grayscale_prob == 0.2
        assert view.crop_area == (0.08, 1.0) and view.flip_prob == 0.5
        assert view.blur_sigma == (0.1, 2.0) and view.blur_kernel_fraction == 0.1
    # The views follow image_size, and a recipe from the config runs.
    config.image_size = 24
    assert augment.parse_recipe(config.augment.view2).size == 24
    view = augment.augment_view(_colourful(30, 40), tf.constant([0, 1]), config.augment.view2)
    assert view.shape == (24, 24, 3) and view.dtype == tf.uint8


# ---------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 9, 11, 3), dtype=np.uint8)
    return sources.from_arrays("tiny", images, np.arange(50) % 5)


RECIPES = [dict(size=8, color_jitter_strength=0.5), dict(size=6, blur_prob=0.0)]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_steps_per_epoch():
    assert data.steps_per_epoch(50, 16) == 3
    with pytest.raises(UserError, match="fewer than one global batch"):
        data.steps_per_epoch(10, 16)


def test_train_batches_order_shapes_and_labels(tiny):
    batches = _take(data.train_batches(tiny, recipes=RECIPES, global_batch=16, seed=3), 4)
    for step, batch in enumerate(batches):  # 3 steps per epoch: step 3 is epoch 1, step 0
        epoch, j = divmod(step, 3)
        perm = np.random.default_rng((3, epoch)).permutation(50)
        np.testing.assert_array_equal(batch["index"], perm[j * 16 : (j + 1) * 16])
        np.testing.assert_array_equal(batch["label"], batch["index"] % 5)
        assert [v.shape for v in batch["views"]] == [(16, 8, 8, 3), (16, 6, 6, 3)]
        assert all(v.dtype == np.uint8 for v in batch["views"])
        assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int64


def test_train_batches_same_global_batch_for_any_process_count(tiny):
    whole = _take(data.train_batches(tiny, recipes=RECIPES, global_batch=16, seed=1), 4)
    shares = [
        _take(
            data.train_batches(
                tiny, recipes=RECIPES, global_batch=16, seed=1, process_index=p, process_count=2
            ),
            4,
        )
        for p in range(2)
    ]
    for step in range(4):
        for key in ("label", "index"):
            joined = np.concatenate([shares[0][step][key], shares[1][step][key]])
            np.testing.assert_array_equal(joined, whole[step][key])
        for v in range(2):
            joined = np.concatenate([shares[0][step]["views"][v], shares[1][step]["views"][v]])
            np.testing.assert_array_equal(joined, whole[step]["views"][v])


def test_train_batches_resume_at_any_step(tiny):
    reference = _take(data.train_batches(tiny, recipes=RECIPES, global_batch=16, seed=2), 5)
    for k in (2, 3, 4):  # 3 steps per epoch: 3 starts epoch 1, 2 and 4 sit either side of it
        resumed = next(
            data.train_batches(tiny, recipes=RECIPES, global_batch=16, seed=2, start_step=k)
        )
        np.testing.assert_array_equal(resumed["index"], reference[k]["index"])
        for v in range(2):
            np.testing.assert_array_equal(resumed["views"][v], reference[k]["views"][v])


def test_augmentation_keyed_by_epoch_and_index(tiny):
    recipe = [dict(size=8)] * 2  # SimCLR: the same recipe twice still gives two different views
    batches = _take(data.train_batches(tiny, recipes=recipe, global_batch=50, seed=0), 2)
    a, b = batches[0]["views"]
    assert all(not np.array_equal(a[i], b[i]) for i in range(50))
    # The same example in epoch 0 and epoch 1 is augmented differently.
    order0, order1 = (np.argsort(batch["index"]) for batch in batches)
    assert np.mean(np.any(a[order0] != batches[1]["views"][0][order1], axis=(1, 2, 3))) > 0.95


def test_train_batches_user_errors(tiny):
    with pytest.raises(UserError, match="divisible"):
        data.train_batches(tiny, recipes=RECIPES, global_batch=15, seed=0, process_count=2)
    with pytest.raises(UserError, match="recipe"):
        data.train_batches(tiny, recipes=[], global_batch=16, seed=0)
    with pytest.raises(UserError, match="fewer than one global batch"):
        data.train_batches(tiny, recipes=RECIPES, global_batch=64, seed=0)


def test_eval_batches_padding_and_mask(tiny):
    batches = list(data.eval_batches(tiny, image_size=9, batch_size=16))
    assert len(batches) == 4  # ceil(50 / 16)
    assert [b["mask"].sum() for b in batches] == [16, 16, 16, 2]
    last = batches[-1]
    assert last["image"].shape == (16, 9, 9, 3) and last["image"].dtype == np.uint8
    assert np.all(last["image"][2:] == 0) and np.all(last["label"][2:] == -1)
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(50) % 5)
    expected = augment.eval_view(tiny.read(tf.constant(49, tf.int64))[0], 9).numpy()
    np.testing.assert_array_equal(last["image"][1], expected)
    shares = [
        list(data.eval_batches(tiny, image_size=9, batch_size=16, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(shares[0]) == len(shares[1]) == 4
    for b, s0, s1 in zip(batches, *shares, strict=True):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([s0[key], s1[key]]), b[key])


# ---------------------------------------------------------------- image folder


def _encode(array, fmt, **kwargs):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _write(path, contents):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(contents)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/{train,test}/{cat,dog}/ with mixed formats, junk files and one truncated JPEG."""
    root = tmp_path_factory.mktemp("images")
    rgba = _colourful(6, 9, 1)[..., :1].repeat(4, -1)
    rgba[..., :3] = _colourful(6, 9, 2)
    grey16 = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000).astype(np.uint16)
    good_jpeg = _encode(_colourful(20, 30, 3), "JPEG", quality=95)
    expected = {  # name -> (H, W) of the decoded image, or None if it must be skipped
        "train/cat/a.JPG": good_jpeg,
        "train/cat/b.jpeg": _encode(_colourful(12, 12, 4), "JPEG"),
        "train/cat/c.png": _encode(rgba, "PNG"),
        "train/cat/d.PNG": _encode(grey16, "PNG"),
        "train/cat/e.png": _encode(_colourful(17, 5, 5), "PNG"),
        "train/cat/f.bmp": _encode(_colourful(4, 4, 6), "BMP"),
        "train/cat/g.webp": _encode(rgba, "WEBP", lossless=True),
        "train/cat/bad.jpg": good_jpeg[: len(good_jpeg) // 2],
        "train/cat/notes.txt": b"not an image",
        "train/cat/.DS_Store": b"\0\0",
        "train/cat/Thumbs.db": b"\0\0",
        "train/dog/x.jpg": _encode(_colourful(8, 8, 7), "JPEG"),
        "train/dog/sub/y.gif": _encode(_colourful(8, 8, 8), "GIF"),
        "test/cat/t.jpg": _encode(_colourful(8, 8, 9), "JPEG"),
        "test/dog/u.png": _encode(_colourful(8, 8, 10), "PNG"),
    }
    for name, contents in expected.items():
        _write(os.path.join(root, name), contents)
    return root, rgba, grey16


def test_image_folder_reads_and_skips(folder, caplog):
    root, rgba, grey16 = folder
    with caplog.at_level(logging.WARNING):
        train = data.get_source(f"imagefolder:{root}", "train")
    assert train.skipped == 1 and "Skipped 1 unreadable" in caplog.text and "bad.jpg" in caplog.text
    assert train.num_examples == 9 and train.class_names == ("cat", "dog")
    images, labels = zip(*(train.read(tf.constant(i, tf.int64)) for i in range(9)), strict=True)
    assert [int(y) for y in labels] == [0] * 7 + [1] * 2
    assert all(x.dtype == tf.uint8 and x.shape[-1] == 3 for x in images)
    assert [tuple(x.shape[:2]) for x in images] == [
        (20, 30),
        (12, 12),
        (6, 9),
        (5, 7),
        (17, 5),
        (4, 4),
        (6, 9),
        (8, 8),
        (8, 8),
    ]
    np.testing.assert_array_equal(images[2].numpy(), rgba[..., :3])  # RGBA PNG: alpha dropped
    np.testing.assert_array_equal(images[6].numpy(), rgba[..., :3])  # RGBA WebP (lossless)
    np.testing.assert_array_equal(images[3].numpy(), np.repeat((grey16 >> 8)[..., None], 3, -1))
    test = data.get_source(f"imagefolder:{root}", "test")
    assert test.num_examples == 2 and test.class_names == ("cat", "dog") and test.skipped == 0
    # Graph-mode reads by path: one pass of the eval pipeline.
    batch = next(data.eval_batches(test, image_size=8, batch_size=4))
    assert batch["mask"].tolist() == [True, True, False, False] and batch["label"][:2].tolist() == [
        0,
        1,
    ]


def test_image_folder_flat_is_unlabeled_and_has_no_test_split(tmp_path):
    for i in range(3):
        _write(tmp_path / f"img{i}.png", _encode(_colourful(6, 6, i), "PNG"))
    _write(tmp_path / "readme.txt", b"hi")
    train = data.get_source(f"imagefolder:{tmp_path}", "train")
    assert (train.num_examples, train.num_classes, train.class_names) == (3, 0, ())
    assert int(train.read(tf.constant(0, tf.int64))[1]) == -1
    assert data.get_source(f"imagefolder:{tmp_path}", "test") is None


def test_image_folder_val_split(tmp_path):
    for split in ("train", "val"):
        _write(tmp_path / split / "a" / "1.png", _encode(_colourful(6, 6), "PNG"))
    assert data.get_source(f"imagefolder:{tmp_path}", "test").name.endswith(":test")


def test_image_folder_user_errors(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        data.get_source(f"imagefolder:{tmp_path}/missing", "train")
    with pytest.raises(UserError, match="no images in"):
        data.get_source(f"imagefolder:{tmp_path}", "train")
    _write(tmp_path / "c" / "broken.jpg", b"\xff\xd8\xff\xe0 garbage")
    with pytest.raises(UserError, match="could be decoded"):
        data.get_source(f"imagefolder:{tmp_path}", "train")


# ---------------------------------------------------------------- demo and TFDS


def test_demo_source():
    train, test = data.get_source("demo", "train"), data.get_source("demo", "test")
    assert (train.num_examples, test.num_examples) == (10_000, 2_000)
    assert train.num_classes == test.num_classes == 10 and train.class_names[0] == "airplane"
    image, label = train.read(tf.constant(9_999, tf.int64))
    assert image.shape == (32, 32, 3) and image.dtype == tf.uint8 and int(label) == 9
    assert train.skipped == 0 and train.name == "demo:train"


def test_tfds_mocked():
    with tfds.testing.mock_data(num_examples=6):
        train = data.get_source("cifar10", "train")
        test = data.get_source("cifar10", "test")
    assert train.num_examples == 6 and train.num_classes == 10 and test.name == "cifar10:test"
    image, label = train.read(tf.constant(5, tf.int64))
    assert image.shape == (32, 32, 3) and image.dtype == tf.uint8 and 0 <= int(label) < 10
    batch = next(data.train_batches(train, recipes=[dict(size=16)], global_batch=4, seed=0))
    assert batch["views"][0].shape == (4, 16, 16, 3)


def test_tfds_decoded_arrays_are_supported():
    def decoded(self, split, decoders=None, read_config=None, **kwargs):
        images = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 1), dtype=np.uint8)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(5)})

    with tfds.testing.mock_data(as_dataset_fn=decoded):
        source = data.get_source("mnist", "train")
    image, label = source.read(tf.constant(3, tf.int64))
    assert image.shape == (12, 12, 3) and int(label) == 3


def test_tfds_unprepared_and_unknown_raise_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(UserError, match="tfds build cifar10"):
        data.get_source("cifar10", "train", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="imagefolder:PATH"):
        data.get_source("no_such_dataset_xyz", "train", data_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing downloaded or prepared
