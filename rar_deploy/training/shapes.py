"""A class-conditional image set made on the machine (no download): ten classes of shapes and patterns with random
colours, sizes, positions, small tilts and textured backgrounds, deterministic from a seed.

Image `index` of class `label` in split `split` depends on (seed, split, label, index) alone, so a split of any size
holds the same first images, and the held-out split never repeats a training image. Colours, textures and noise
vary enough that a generator's next-token distributions are not trivially peaked. Numpy only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CLASSES = ("circle", "square", "triangle", "ring", "cross", "stripes", "checker", "diamond", "dots", "star")
SPLITS = {"train": 0, "held_out": 1}
# Shapes stand upright within this tilt: under a full turn the demo generator drew squares, triangles and diamonds
# as blobs (a triangle and its upside-down self, a square and a diamond, were one class's many looks)
MAX_TILT = np.radians(20)


def _background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth colour gradient with low-frequency waves and pixel noise, [H, W, 3] in [0, 1]."""
    start, end = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y + 1) / 2
    image = start + (end - start) * ramp[..., None]
    frequency, phase = rng.uniform(1, 3, 2), rng.uniform(0, 2 * np.pi, 2)
    waves = np.sin(np.pi * frequency[0] * x + phase[0]) * np.sin(np.pi * frequency[1] * y + phase[1])
    image = image + rng.uniform(0.03, 0.08) * waves[..., None] * rng.uniform(-1, 1, 3)
    return image + rng.normal(0, rng.uniform(0.005, 0.02), image.shape)


def _frame(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The shape's own coordinates (v points down the image): centred at a random place, tilted, in units of its
    random radius."""
    radius = rng.uniform(0.55, 0.85)
    cx, cy = rng.uniform(-0.95 + radius, 0.95 - radius, 2)
    angle = rng.uniform(-1, 1) * MAX_TILT
    u, v = (x - cx) / radius, (y - cy) / radius
    return np.cos(angle) * u + np.sin(angle) * v, -np.sin(angle) * u + np.cos(angle) * v, radius


def _circle(rng, u, v):
    return u**2 + v**2 <= 1


def _square(rng, u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.7


def _triangle(rng, u, v):
    return (v <= 0.5) & (v >= np.sqrt(3) * np.abs(u) - 1)  # equilateral, apex up, inscribed in the unit disk


def _ring(rng, u, v):
    r, width = np.sqrt(u**2 + v**2), rng.uniform(0.3, 0.45)
    return (r <= 1) & (r >= 1 - width)


def _cross(rng, u, v):
    width = rng.uniform(0.25, 0.4)
    return ((np.abs(u) <= width) & (np.abs(v) <= 1)) | ((np.abs(v) <= width) & (np.abs(u) <= 1))


def _stripes(rng, u, v):
    period = rng.uniform(0.5, 0.7)
    return (np.maximum(np.abs(u), np.abs(v)) <= 1) & (np.mod(u, period) < period / 2)


def _checker(rng, u, v):
    cell = rng.uniform(0.45, 0.6)
    parity = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
    return (np.maximum(np.abs(u), np.abs(v)) <= 1) & parity


def _diamond(rng, u, v):
    return np.abs(u) / 0.6 + np.abs(v) <= 1  # standing on a point, diagonals 1 : 0.6, so never a tilted square


def _dots(rng, u, v):
    spacing, size = rng.uniform(0.6, 0.8), rng.uniform(0.17, 0.24)
    du, dv = np.mod(u, spacing) - spacing / 2, np.mod(v, spacing) - spacing / 2
    return (np.maximum(np.abs(u), np.abs(v)) <= 1) & (du**2 + dv**2 <= size**2)


def _star(rng, u, v):
    points = 5
    r, theta = np.sqrt(u**2 + v**2), np.arctan2(v, u) + np.pi / 2  # a spike straight up
    edge = 0.45 + 0.55 * np.abs(np.cos(points * theta / 2)) ** 3  # five spikes of radius 1, valleys at 0.45
    return r <= edge


SHAPES: dict[str, Callable] = {"circle": _circle, "square": _square, "triangle": _triangle, "ring": _ring,
                               "cross": _cross, "stripes": _stripes, "checker": _checker, "diamond": _diamond,
                               "dots": _dots, "star": _star}


def make_image(label: int, seed: int, split: str = "train", index: int = 0, size: int = 128,
               supersample: int = 1) -> np.ndarray:
    """Image `index` of class `label` (CLASSES[label]) in `split`: uint8 [size, size, 3]; drawn at `supersample`
    times the size and averaged down (anti-aliased edges and stripes), the same picture at every size."""
    rng = np.random.default_rng([seed, SPLITS[split], label, index])
    drawn = size * supersample
    axis = (np.arange(drawn) + 0.5) / drawn * 2 - 1
    x, y = np.meshgrid(axis, axis)
    image = _background(rng, x, y)
    u, v, _ = _frame(rng, x, y)
    mask = SHAPES[CLASSES[label]](rng, u, v)
    ground = image[mask].mean(axis=0) if mask.any() else image.mean(axis=(0, 1))
    colour = rng.uniform(0, 1, 3)
    while np.abs(colour - ground).max() < 0.5:  # a shape plainly visible on its ground
        colour = rng.uniform(0, 1, 3)
    shade = 1 + rng.uniform(0.05, 0.2) * (u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1))
    shape = colour * shade[..., None] + rng.normal(0, rng.uniform(0.005, 0.02), image.shape)
    image = np.clip(np.where(mask[..., None], shape, image), 0, 1)
    image = image.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return (image * 255 + 0.5).astype(np.uint8)


def make_split(per_class: int, seed: int, split: str = "train", size: int = 128,
               supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [10 * per_class, size, size, 3] and int64 labels, class by class."""
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = np.stack([make_image(int(label), seed, split, i % per_class, size, supersample)
                       for i, label in enumerate(labels)])
    return images, labels
