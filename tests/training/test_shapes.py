"""The demo image set made on the machine: deterministic, image by image, held out apart, and varied."""

from __future__ import annotations

import numpy as np

from rar_deploy.training.shapes import CLASSES, make_image, make_split


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
