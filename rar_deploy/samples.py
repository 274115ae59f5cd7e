"""What rar-generate writes: one PNG per image, grid.png, and samples.json saying what made them.

samples.json also marks the folder as rar-generate's own, the only kind of folder its --force replaces.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

SCHEMA = "rar-deploy/samples"
NUMPY_MAGIC = b"\x93NUMPY"
GRID_COLUMNS = 8


def image_grid(images: Sequence[Image.Image], columns: int) -> Image.Image:
    """Images in rows of `columns`."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


def grid_columns(num_images: int, num_per_class: int) -> int:
    """One row per class when there are several images per class, else rows of up to 8."""
    return num_per_class if num_per_class > 1 else min(num_images, GRID_COLUMNS)


def image_name(index: int, label: int) -> str:
    return f"{index:04d}_class{label}.png"


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> the PNG file rar-generate writes for it, byte for byte."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_samples(folder: Path, images: np.ndarray, labels: Sequence[int], num_per_class: int, record: dict) -> None:
    """uint8 images [B, H, W, 3] -> PNGs, grid.png and samples.json (with `record`: artifacts, seed, sampling...)."""
    pictures = [Image.fromarray(image) for image in images]
    names = [image_name(index, int(label)) for index, label in enumerate(labels)]
    for name, image in zip(names, images):
        (folder / name).write_bytes(png_bytes(image))
    image_grid(pictures, grid_columns(len(pictures), num_per_class)).save(folder / "grid.png")
    samples = {"schema": SCHEMA, **record, "class_labels": [int(label) for label in labels], "images": names}
    (folder / "samples.json").write_text(json.dumps(samples, indent=1) + "\n")


def is_samples_folder(path: Path) -> bool:
    """A folder rar-generate wrote (it holds our samples.json)."""
    try:
        return json.loads((path / "samples.json").read_text()).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def is_numpy_file(path: Path) -> bool:
    """A .npy file (what --save-tokens writes), the only kind of file --save-tokens --force replaces."""
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(len(NUMPY_MAGIC)) == NUMPY_MAGIC
    except OSError:
        return False
