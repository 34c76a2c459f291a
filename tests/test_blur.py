"""The Gaussian blur as two matrix products equals the depthwise-convolution blur it replaced."""

import numpy as np
import pytest
import tensorflow as tf

from ssl_jax.data import augment


def _reference_blur(image, seed, recipe):
    """The former augment._gaussian_blur: reflect-pad, then two depthwise convolutions."""
    radius = int(recipe.size * recipe.blur_kernel_fraction) // 2
    if radius < 1:
        return image
    sigma = augment._uniform(seed, *recipe.blur_sigma)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(x**2) / (2 * sigma**2))
    kernel /= tf.reduce_sum(kernel)  # [k]
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    vertical = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])  # [k, 1, 3, 1]
    horizontal = tf.reshape(vertical, [1, -1, 3, 1])  # [1, k, 3, 1]
    out = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, horizontal, [1, 1, 1, 1], "VALID")
    return out[0]


# (size, blur_kernel_fraction): radius = int(size * fraction) // 2 is 11 at 224 (SimCLR), 4 at 96,
# 1 at 33; at 16 the default gives no kernel, so larger fractions, up to radius size / 2 at 1.0.
SIZES = [(224, 0.1), (96, 0.1), (33, 0.1), (16, 0.5), (16, 1.0), (3, 1.0), (2, 1.0)]
SIGMAS = [(0.1, 0.1), (1.0, 1.0), (2.0, 2.0), (0.1, 2.0), (5.0, 5.0)]


@pytest.mark.parametrize("size,fraction", SIZES)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_blur_matches_depthwise_conv(size, fraction, sigma):
    recipe = augment.parse_recipe(dict(size=size, blur_kernel_fraction=fraction, blur_sigma=sigma))
    rng = np.random.default_rng(size)
    for i in range(3):
        image = tf.constant(rng.uniform(0, 255, (size, size, 3)), tf.float32)  # 0..255 scale
        seed = tf.constant([size, i], tf.int64)  # the same seed: the same sigma draw
        new = augment._gaussian_blur(image, seed, recipe).numpy()
        old = _reference_blur(image, seed, recipe).numpy()
        assert new.shape == old.shape == (size, size, 3) and new.dtype == np.float32
        np.testing.assert_array_less(np.abs(new - old).max(), 2e-4)  # float32 roundings at 255


@pytest.mark.parametrize("size,fraction", SIZES)
def test_blur_keeps_a_constant_image(size, fraction):
    recipe = augment.parse_recipe(dict(size=size, blur_kernel_fraction=fraction))
    image = tf.fill([size, size, 3], 200.0)  # 0..255 scale
    out = augment._gaussian_blur(image, tf.constant([3, 4], tf.int64), recipe).numpy()
    np.testing.assert_allclose(out, 200.0, rtol=0, atol=1e-4)  # the borders too: no darkening


def test_blur_matrix_rows_sum_to_one():
    kernel = tf.constant([0.1, 0.2, 0.4, 0.2, 0.1])
    matrix = augment._blur_matrix(kernel, 6, 2).numpy()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
    # Row 0 reads pixels -2, -1, 0, 1, 2, reflected to 2, 1, 0, 1, 2.
    np.testing.assert_allclose(matrix[0], [0.4, 0.4, 0.2, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(matrix[5], [0, 0, 0, 0.2, 0.4, 0.4], atol=1e-7)
    np.testing.assert_allclose(matrix[2], [0.1, 0.2, 0.4, 0.2, 0.1, 0], atol=1e-7)


def test_views_match_the_depthwise_conv_views(monkeypatch):
    """Whole views through tf.data (graph mode), blur on: uint8 bytes differ by at most 1."""
    recipe = dict(size=64, blur_prob=1.0, solarize_prob=0.2)
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (80, 90, 3), dtype=np.uint8))

    def views():
        def one(i):
            return augment.augment_view(image, tf.stack([tf.constant(7, tf.int64), i]), recipe)

        return next(tf.data.Dataset.range(32).map(one).batch(32).as_numpy_iterator())

    new = views().astype(int)
    monkeypatch.setattr(augment, "_gaussian_blur", _reference_blur)
    old = views().astype(int)
    assert np.abs(new - old).max() <= 1  # a value at a rounding boundary may round the other way
    assert np.mean(new != old) < 1e-3
