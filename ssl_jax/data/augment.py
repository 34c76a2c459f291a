"""View augmentations as TF ops with stateless randomness (SimCLR's recipe, BYOL's solarisation).

Every random choice comes from the seed passed in, split once per op, so a view is a pure function
of (image, seed, recipe): the same in eager mode and inside tf.data, on any host, after any restart.

A recipe is a ConfigDict (or dict) with these fields; defaults are SimCLR's ImageNet values
(Chen et al. 2020, appendix A):

    size                    output side in pixels (required)
    crop_area               (min, max) crop area as a fraction of the image       (0.08, 1.0)
    crop_aspect             (min, max) crop width / height                        (3/4, 4/3)
    flip_prob               horizontal flip                                        0.5
    color_jitter_prob       apply colour jitter at all                             0.8
    color_jitter_strength   s: brightness 0.8s, contrast 0.8s, saturation 0.8s,
                            hue 0.2s, in a random order per example                1.0
    color_jitter            (brightness, contrast, saturation, hue) given one by
                            one, overriding the strength (BYOL, MoCo v2: e.g.
                            (0.4, 0.4, 0.2, 0.1)); () derives them from s         ()
    brightness_mode         "additive": x + U(-b, b) (SimCLR v1's code);
                            "multiplicative": x * U(1 - b, 1 + b) (SimCLR v2's,
                            BYOL's code, torchvision)                              additive
    grayscale_prob          convert to grey (kept as 3 channels)                   0.2
    blur_prob               Gaussian blur                                          0.5
    blur_sigma              (min, max) sigma in pixels of the output               (0.1, 2.0)
    blur_kernel_fraction    kernel side / output side (rounded to odd)             0.1
    solarize_prob           pixels >= 128 (of 255) inverted, as PIL's solarize in
                            BYOL's and MoCo v3's code                              0.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from ssl_jax.errors import UserError

_CROP_ATTEMPTS = 100
BRIGHTNESS_MODES = ("additive", "multiplicative")
# One independent stream per random decision; the position in this tuple is the stream's id.
_STREAMS = (
    "crop", "flip", "jitter", "order", "brightness", "contrast", "saturation", "hue",
    "grayscale", "blur", "sigma", "solarize",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated view recipe; see the module docstring for the fields."""

    size: int
    crop_area: tuple[float, float] = (0.08, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    color_jitter_strength: float = 1.0
    color_jitter: tuple[float, ...] = ()
    brightness_mode: str = "additive"
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    solarize_prob: float = 0.0


def parse_recipe(recipe: Mapping[str, Any] | Recipe) -> Recipe:
    """Validates a recipe (ConfigDict, dict or Recipe); a typo in a field name is an error.

    Raises:
        UserError: unknown field, missing size, or a value out of range.
    """
    if isinstance(recipe, Recipe):
        return recipe
    values = dict(recipe.items())
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown augmentation recipe field(s) {unknown}; known: {sorted(known)}")
    if "size" not in values:
        raise UserError("augmentation recipe needs `size` (output side in pixels)")
    for key in ("crop_area", "crop_aspect", "blur_sigma", "color_jitter"):
        if key in values:
            try:
                values[key] = tuple(float(v) for v in values[key])
            except (TypeError, ValueError):
                raise UserError(
                    f"recipe {key} must be a tuple of numbers, got {values[key]!r}"
                ) from None
            if any(v != v for v in values[key]):  # NaN
                raise UserError(f"recipe {key} has a NaN: {values[key]}")
    for key in ("crop_area", "crop_aspect", "blur_sigma"):
        if key in values:
            if len(values[key]) != 2 or values[key][0] > values[key][1] or values[key][0] <= 0:
                raise UserError(f"recipe {key} must be (min, max) with 0 < min <= max")
    if "color_jitter" in values:
        jitter = values["color_jitter"]
        if jitter and (len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5):
            raise UserError(
                "recipe color_jitter must be () or (brightness, contrast, saturation, hue), "
                f"each >= 0 and hue <= 0.5; got {jitter}"
            )
    if values.get("brightness_mode", "additive") not in BRIGHTNESS_MODES:
        raise UserError(
            f"recipe brightness_mode={values['brightness_mode']!r} is not one of "
            f"{', '.join(BRIGHTNESS_MODES)}"
        )
    parsed = Recipe(**values)
    if int(parsed.size) != parsed.size or parsed.size < 1:
        raise UserError(f"recipe size must be a positive integer, got {parsed.size}")
    if parsed.crop_area[1] > 1:
        raise UserError(f"recipe crop_area max must be <= 1, got {parsed.crop_area}")
    for key in ("flip_prob", "color_jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
        if not 0 <= getattr(parsed, key) <= 1:
            raise UserError(f"recipe {key} must be in [0, 1], got {getattr(parsed, key)}")
    if parsed.color_jitter_strength < 0:
        raise UserError(
            f"recipe color_jitter_strength must be >= 0, got {parsed.color_jitter_strength}"
        )
    if not 0 <= parsed.blur_kernel_fraction <= 1:
        raise UserError(
            f"recipe blur_kernel_fraction must be in [0, 1], got {parsed.blur_kernel_fraction}"
        )
    return dataclasses.replace(parsed, size=int(parsed.size))


def random_crop_box(
    image_shape: tf.Tensor, seed: tf.Tensor, area: tuple[float, float], aspect: tuple[float, float]
) -> tuple[tf.Tensor, tf.Tensor]:
    """SimCLR's random-resized-crop window, with torchvision's centre-crop fallback.

    tf.image.stateless_sample_distorted_bounding_box samples the aspect (w / h) uniformly in
    `aspect`, then a height for an area in `area`, and retries up to 100 times. min_object_covered
    is set to the minimum area so the whole declared range is reachable (SimCLR's 0.1 silently
    raises 0.08 to 0.1). When every attempt fails the op returns the whole image; then we take the
    largest centred window whose aspect lies in range, as torchvision does.

    Args:
        image_shape: int [3], (H, W, C).
        seed: stateless seed [2].
        area: (min, max) fraction of H * W.
        aspect: (min, max) width / height.

    Returns:
        (offset, size): int32 [2] each, (y, x) and (h, w).
    """
    image_shape = tf.cast(image_shape, tf.int32)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=area[0],
        aspect_ratio_range=aspect,
        area_range=area,
        max_attempts=_CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    hw = image_shape[:2]
    h, w = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
    ratio = w / h
    fallback_w = tf.where(ratio > aspect[1], tf.round(h * aspect[1]), w)
    fallback_h = tf.where(ratio < aspect[0], tf.round(w / aspect[0]), h)
    fallback = tf.cast(tf.stack([fallback_h, fallback_w]), tf.int32)
    failed = tf.reduce_all(tf.equal(size[:2], hw))
    size = tf.where(failed, tf.maximum(fallback, 1), size[:2])
    begin = tf.where(failed, (hw - size) // 2, begin[:2])
    return begin, size


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8/float [h, w, 3] -> float32 [size, size, 3] in [0, 1]; bicubic as in SimCLR."""
    resized = tf.image.resize(image, [size, size], method="bicubic")
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def _maybe(seed: tf.Tensor, prob: float, fn, image: tf.Tensor) -> tf.Tensor:
    """Applies fn with probability prob; prob 0 or 1 adds no op to the graph."""
    if prob <= 0:
        return image
    if prob >= 1:
        return fn(image)
    apply = tf.random.stateless_uniform([], seed) < prob
    return tf.cond(apply, lambda: fn(image), lambda: image)


def _uniform(seed: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high)


def jitter_strengths(recipe: Recipe) -> tuple[float, float, float, float]:
    """(brightness, contrast, saturation, hue): given, or 0.8s, 0.8s, 0.8s, 0.2s (SimCLR)."""
    if recipe.color_jitter:
        return recipe.color_jitter
    s = recipe.color_jitter_strength
    return 0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5)


def _color_jitter(image: tf.Tensor, seeds: dict[str, tf.Tensor], recipe: Recipe) -> tf.Tensor:
    """Brightness, contrast, saturation, hue in a random order; clipped to [0, 1] after each."""
    b, c, s, h = jitter_strengths(recipe)
    contrast = _uniform(seeds["contrast"], max(0.0, 1 - c), 1 + c)
    saturation = _uniform(seeds["saturation"], max(0.0, 1 - s), 1 + s)
    hue = _uniform(seeds["hue"], -h, h)
    if recipe.brightness_mode == "multiplicative":
        factor = _uniform(seeds["brightness"], max(0.0, 1 - b), 1 + b)
        brightness_op = lambda x: x * factor
    else:
        shift = _uniform(seeds["brightness"], -b, b)
        brightness_op = lambda x: x + shift
    ops = [
        brightness_op,
        lambda x: tf.image.adjust_contrast(x, contrast),
        lambda x: tf.image.adjust_saturation(x, saturation),
        lambda x: tf.image.adjust_hue(x, hue),
    ]
    order = tf.argsort(tf.random.stateless_uniform([4], seeds["order"]))  # a permutation of 0..3
    for position in range(4):
        image = tf.switch_case(
            order[position], [lambda op=op, x=image: tf.clip_by_value(op(x), 0, 1) for op in ops]
        )
    return image


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def _blur_matrix(kernel: tf.Tensor, n: int, radius: int) -> tf.Tensor:
    """The [n, n] matrix M with (M @ x) = x reflect-padded by radius, then correlated with kernel.

    Row i holds the 2 * radius + 1 taps at columns i - radius .. i + radius; a column past an edge
    is mirrored back inside (tf.pad's REFLECT: -1 -> 1, n -> n - 2), so the taps that fall on the
    padding add onto the pixels they copy. Needs radius < n, as REFLECT does.
    """
    rows = np.arange(n)[:, None]  # [n, 1]
    cols = rows + np.arange(-radius, radius + 1)  # [n, k], before reflection
    cols = np.where(cols < 0, -cols, cols)
    cols = np.where(cols > n - 1, 2 * (n - 1) - cols, cols)
    indices = np.stack(np.broadcast_arrays(rows, cols), axis=-1).reshape(-1, 2)  # [n * k, 2]
    # scatter_nd sums the updates of repeated indices: the folded-in padding taps.
    return tf.scatter_nd(indices.astype(np.int32), tf.tile(kernel, [n]), [n, n])


def _gaussian_blur(image: tf.Tensor, seed: tf.Tensor, recipe: Recipe) -> tf.Tensor:
    """Separable Gaussian blur of a [size, size, C] view, reflect-padded (borders keep brightness).

    Computed as two matrix products, M @ image along the columns then along the rows, with M the
    banded [size, size] matrix of the 1-D kernel with the reflect padding folded in (_blur_matrix).
    Why: it is the same blur as reflect-padding and two depthwise convolutions (equal to ~1e-7 on
    the [0, 1] scale), but TF's CPU depthwise_conv2d is slow with a long kernel (23 taps at 224
    px): ~11.5 CPU ms per blurred 224 px view, about 3/4 of a two-view SimCLR example's pipeline
    CPU time (benchmarks/pipeline.py's stage table). The matrix products, multiplies by zero
    included, take ~1.4 ms.
    """
    radius = int(recipe.size * recipe.blur_kernel_fraction) // 2
    if radius < 1:
        return image
    sigma = _uniform(seed, *recipe.blur_sigma)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(x**2) / (2 * sigma**2))
    kernel /= tf.reduce_sum(kernel)  # [k]
    image = tf.ensure_shape(image, [recipe.size, recipe.size, None])
    matrix = _blur_matrix(kernel, recipe.size, radius)  # [size, size]
    out = tf.einsum("ij,jwc->iwc", matrix, image)  # along the columns (vertical)
    return tf.einsum("wj,ijc->iwc", matrix, out)  # along the rows (horizontal)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


def augment_view(
    image: tf.Tensor, seed: tf.Tensor, recipe: Mapping[str, Any] | Recipe
) -> tf.Tensor:
    """One random view: crop, resize, flip, colour jitter, grayscale, blur, solarize, in order.

    Args:
        image: uint8 [H, W, 3], any size.
        seed: int32/int64 [2], a stateless seed; the same seed gives the same view.
        recipe: see the module docstring.

    Returns:
        uint8 [recipe.size, recipe.size, 3].
    """
    recipe = parse_recipe(recipe)
    streams = tf.unstack(tf.random.experimental.stateless_split(seed, len(_STREAMS)))  # V x [2]
    seeds = dict(zip(_STREAMS, streams, strict=True))

    # Crop the uint8 image first so only the window is resized and converted.
    offset, size = random_crop_box(
        tf.shape(image), seeds["crop"], recipe.crop_area, recipe.crop_aspect
    )
    crop = tf.slice(image, tf.concat([offset, [0]], 0), tf.concat([size, [3]], 0))  # [h, w, 3]
    view = _resize(crop, recipe.size)  # [S, S, 3] float32 in [0, 1]

    view = _maybe(seeds["flip"], recipe.flip_prob, tf.image.flip_left_right, view)
    if max(jitter_strengths(recipe)) > 0:
        jitter = lambda x: _color_jitter(x, seeds, recipe)
        view = _maybe(seeds["jitter"], recipe.color_jitter_prob, jitter, view)
    view = _maybe(seeds["grayscale"], recipe.grayscale_prob, _grayscale, view)
    blur = lambda x: _gaussian_blur(x, seeds["sigma"], recipe)
    view = _maybe(seeds["blur"], recipe.blur_prob, blur, view)
    # Compared on the uint8 grid, so a value exactly at 128 inverts as in PIL.
    solarize = lambda x: tf.where(tf.round(x * 255.0) < 128.0, x, 1.0 - x)
    view = _maybe(seeds["solarize"], recipe.solarize_prob, solarize, view)

    out = _to_uint8(view)
    out.set_shape([recipe.size, recipe.size, 3])
    return out


# Straight-line TF ops: nothing for AutoGraph to convert, and its converter trips on this function.
@tf.autograph.experimental.do_not_convert
def eval_view(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """The deterministic evaluation view: centred square crop, then resize to image_size.

    The crop keeps 0.875 of the shorter side (the ImageNet convention, 224 of 256), except for small
    images (shorter side <= 64 px, e.g. CIFAR, STL) where cropping would throw away content: those
    keep the whole shorter side.

    Args:
        image: uint8 [H, W, 3].
        image_size: output side.

    Returns:
        uint8 [image_size, image_size, 3].
    """
    hw = tf.shape(image)[:2]
    short = tf.reduce_min(hw)
    fraction = tf.where(short <= 64, 1.0, 0.875)
    side = tf.maximum(tf.cast(tf.round(fraction * tf.cast(short, tf.float32)), tf.int32), 1)
    offset = (hw - side) // 2
    crop = tf.slice(image, tf.concat([offset, [0]], 0), tf.stack([side, side, 3]))  # [s, s, 3]
    out = _to_uint8(_resize(crop, image_size))
    out.set_shape([image_size, image_size, 3])
    return out
