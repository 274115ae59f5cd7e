"""The demo image set made on the machine: deterministic, image by image, held out apart, and varied."""

from __future__ import annotations

import numpy as np

from rar_deploy.training.shapes import CLASSES, MAX_TILT, SHAPES, _frame, make_image, make_split


def test_an_image_depends_on_its_seed_split_class_and_index_alone():
    small, labels = make_split(2, seed=5)
    large, _ = make_split(4, seed=5)
    assert small.shape == (20, 128, 128, 3) and small.dtype == np.uint8
    assert list(labels) == [c for c in range(len(CLASSES)) for _ in range(2)]
    for label in range(len(CLASSES)):  # the first two of each class, whatever the split's size
        np.testing.assert_array_equal(small[2 * label:2 * label + 2], large[4 * label:4 * label + 2])
    np.testing.assert_array_equal(make_image(3, 5, "train", 1), small[7])
    assert not np.array_equal(make_image(3, 6, "train", 1), small[7])


def test_the_held_out_split_repeats_no_training_image():
    train, _ = make_split(8, seed=0)
    held_out, _ = make_split(8, seed=0, split="held_out")
    assert not any(np.array_equal(a, b) for a in train for b in held_out)


def test_colours_and_textures_vary():
    """Measured on 200 images (seed 0): 8.7 bits of colour entropy over 512 coarse colours (bound 7.5), and at least
    8 coarse colours in every image (textured backgrounds and shaded shapes, not flat fills; the images are
    deterministic, so that bound is the measured minimum)."""
    images, _ = make_split(20, seed=0)
    coarse = (images // 32).astype(np.int64)
    codes = (coarse[..., 0] * 64 + coarse[..., 1] * 8 + coarse[..., 2]).reshape(-1)
    p = np.bincount(codes, minlength=512) / codes.size
    p = p[p > 0]
    assert -(p * np.log2(p)).sum() > 7.5
    assert min(len(np.unique(image.reshape(-1), return_counts=False)) for image in codes.reshape(len(images), -1)) >= 8
    assert len({image.tobytes() for image in images}) == len(images)


def test_shapes_stand_upright():
    """Every shape's frame is tilted at most MAX_TILT (and the tilts vary); on an untilted frame (v down the image)
    a triangle points up, a diamond stands on a point and a star has a spike straight up."""
    axis = (np.arange(64) + 0.5) / 64 * 2 - 1
    x, y = np.meshgrid(axis, axis)
    tilts = []
    for index in range(200):
        u, _, _ = _frame(np.random.default_rng([0, 0, 2, index]), x, y)
        tilts.append(abs(np.arctan2(u[1, 0] - u[0, 0], u[0, 1] - u[0, 0])))  # u's gradient against the image's x
    tilts = np.array(tilts)
    assert tilts.max() <= MAX_TILT + 1e-9 and tilts.max() > MAX_TILT / 2
    u, v = np.meshgrid(np.linspace(-1, 1, 201), np.linspace(-1, 1, 201))  # row 0 is the top of the image
    triangle = SHAPES["triangle"](None, u, v)
    rows = np.flatnonzero(triangle.any(axis=1))
    assert triangle[rows[0]].sum() < 5 < triangle[rows[-1]].sum()  # a point on top, the base below
    diamond, star = SHAPES["diamond"](None, u, v), SHAPES["star"](None, u, v)
    assert diamond[3, 100] and diamond[197, 100] and not diamond[100, 3] and not diamond[100, 197]
    assert star[3, 100] and not star[197, 100]
