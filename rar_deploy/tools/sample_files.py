"""What rar-generate writes: one PNG per image, grid.png, samples.json saying what made them, and the tokens.

Images are written as they are made (memory stays one batch and one row of the grid, whatever the count).
samples.json lists every file of the folder: it marks the folder as rar-generate's own and says what its
--force may replace. A tokens file is a standard .npy whose header ends with TOKENS_MARK, the only kind of
file --save-tokens --force replaces.
"""

from __future__ import annotations

import ast
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

SCHEMA = "rar-deploy/samples"
GRID = "grid.png"
SAMPLES = "samples.json"
GRID_COLUMNS = 8
TOKENS_MARK = "# rar-deploy tokens"
_NPY_MAGIC = b"\x93NUMPY\x01\x00"


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


class GridWriter:
    """A PNG of images in rows of `columns`, streamed: each row of the grid is compressed as soon as it is
    complete (a short last row is filled with black)."""

    def __init__(self, path: Path, num_images: int, columns: int, height: int, width: int) -> None:
        self.file = open(path, "wb")
        self.columns, self.height, self.width = columns, height, width
        self.band = np.zeros((height, columns * width, 3), np.uint8)
        self.filled = 0
        rows = -(-num_images // columns)
        self.file.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", columns * width, rows * height, 8, 2, 0, 0, 0))
        self.compressor = zlib.compressobj(6)

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.file.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))

    def add(self, image: np.ndarray) -> None:
        column = self.filled % self.columns
        self.band[:, column * self.width:(column + 1) * self.width] = image
        self.filled += 1
        if column == self.columns - 1:
            self._flush_band()

    def _flush_band(self) -> None:
        scanlines = np.zeros((self.height, 1 + self.band.shape[1] * 3), np.uint8)  # filter byte 0: none
        scanlines[:, 1:] = self.band.reshape(self.height, -1)
        compressed = self.compressor.compress(scanlines.tobytes())
        if compressed:
            self._chunk(b"IDAT", compressed)
        self.band[:] = 0

    def close(self) -> None:
        if self.filled % self.columns:
            self._flush_band()
        self._chunk(b"IDAT", self.compressor.flush())
        self._chunk(b"IEND", b"")
        self.file.close()


class SamplesWriter:
    """rar-generate's folder: images added in order, samples.json written last (with every file's name)."""

    def __init__(self, folder: Path, labels: Sequence[int], num_per_class: int, height: int, width: int) -> None:
        self.folder, self.labels = folder, [int(label) for label in labels]
        self.grid = GridWriter(folder / GRID, len(self.labels), grid_columns(len(self.labels), num_per_class),
                               height, width)
        self.names: list[str] = []

    def add(self, images: np.ndarray) -> None:
        """The next uint8 images [b, H, W, 3]."""
        for image in images:
            name = image_name(len(self.names), self.labels[len(self.names)])
            (self.folder / name).write_bytes(png_bytes(image))
            self.grid.add(image)
            self.names.append(name)

    def finish(self, record: dict) -> None:
        """samples.json, with `record` (artifacts, seed, sampling...): what made the images."""
        self.grid.close()
        samples = {"schema": SCHEMA, **record, "class_labels": self.labels, "images": self.names,
                   "files": [*self.names, GRID, SAMPLES]}
        (self.folder / SAMPLES).write_text(json.dumps(samples, indent=1) + "\n")


def samples_written(path: Path) -> frozenset[str] | None:
    """The files rar-generate (Python or C++) wrote in a folder, as its samples.json lists them; None if it has none."""
    try:
        samples = json.loads((path / SAMPLES).read_text())
        if samples.get("schema") != SCHEMA:
            return None
        files = samples.get("files") or [*samples["images"], GRID, SAMPLES]  # written before "files" existed
        return frozenset(str(name) for name in files) | {SAMPLES}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


class TokensWriter:
    """An int64 .npy [rows, columns] written row block by row block (the header first: the shape is known)."""

    def __init__(self, path: Path, rows: int, columns: int) -> None:
        header = f"{{'descr': '<i8', 'fortran_order': False, 'shape': ({rows}, {columns}), }} {TOKENS_MARK}"
        padding = -(len(_NPY_MAGIC) + 2 + len(header) + 1) % 64
        header = (header + " " * padding + "\n").encode("latin1")
        self.file = open(path, "wb")
        self.file.write(_NPY_MAGIC + struct.pack("<H", len(header)) + header)

    def add(self, tokens: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(tokens, "<i8").tobytes())

    def close(self) -> None:
        self.file.close()


def tokens_written(path: Path) -> frozenset[str] | None:
    """frozenset() if `path` is a tokens file rar-generate wrote (its .npy header carries TOKENS_MARK), else None."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                return None
            (length,) = struct.unpack("<H", f.read(2))
            header = f.read(length).decode("latin1")
        ast.literal_eval(header)  # a valid header, and ...
        return frozenset() if header.rstrip().endswith(TOKENS_MARK) else None  # ... ours
    except (OSError, ValueError, SyntaxError, struct.error):
        return None
