"""Weight-only quantization of the step graph's Linear weights: the scheme, its one rounding rule, and its record
in the manifest (`weights`, docs/CONTRACT.md). Numpy only: export, the torch backend and any reader share it.

Symmetric round-to-nearest, no zero point: int8 with one scale per output channel, int4 with one scale per block
of `group_size` consecutive input channels of an output channel. The scale is stored in the activation precision
and the integers are rounded against the stored scale, so that `q * scale` is exactly the weight every backend
multiplies by (ONNX `DequantizeLinear`, the torch reference, TensorRT).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rar_deploy.errors import RARDeployError

SCHEMES = ("int8", "int4")
GROUP_SIZES = (128, 64, 32)  # int4 blocks; the default is the first that divides every quantized width
LEVELS = {"int8": 127, "int4": 7}  # symmetric: -LEVELS .. LEVELS


@dataclass(frozen=True)
class WeightQuantization:
    scheme: str  # "int8" | "int4"
    group_size: int | None = None  # int4: input channels per scale; int8: None (one scale per output channel)

    @property
    def label(self) -> str:
        """int8, int4-g64: the scheme in a word."""
        return self.scheme if self.group_size is None else f"{self.scheme}-g{self.group_size}"

    @property
    def description(self) -> str:
        return "int8 per output channel" if self.group_size is None else f"int4 in blocks of {self.group_size}"

    @property
    def levels(self) -> int:
        return LEVELS[self.scheme]

    def scale_shape(self, in_features: int, out_features: int) -> tuple[int, ...]:
        """The shape of the scales of a [in_features, out_features] MatMul weight."""
        return (out_features,) if self.group_size is None else (in_features // self.group_size, out_features)

    def to_manifest(self, tensors: dict[str, list[int]], scale_dtype: str) -> dict:
        return {"scheme": self.scheme, "group_size": self.group_size, "symmetric": True,
                "rounding": "round half to even of weight / scale, scale = max |weight| / "
                            f"{self.levels} over its channel or block, stored in {scale_dtype}",
                "axis": "output channel" if self.group_size is None else "blocks along the input channels",
                "calibration": None, "tensors": tensors}

    @classmethod
    def from_manifest(cls, section: dict | None) -> WeightQuantization | None:
        return None if section is None else cls(section["scheme"], section["group_size"])


def weight_quantization(scheme: str | None, group_size: int | None, widths: dict[str, int]
                        ) -> WeightQuantization | None:
    """The scheme a user asked for (None: float weights), checked against the input widths of the Linears it
    would quantize (name -> in_features) before any heavy work; one clear line when it cannot apply."""
    if scheme in (None, "float"):
        if group_size is not None:
            raise RARDeployError("--group-size applies to --weights int4 only")
        return None
    if scheme not in SCHEMES:
        raise RARDeployError(f"--weights {scheme} is not a scheme: choose float, {', '.join(SCHEMES)}")
    if scheme == "int8":
        if group_size is not None:
            raise RARDeployError("--group-size applies to --weights int4 only (int8 has one scale per output channel)")
        return WeightQuantization("int8")
    if group_size is not None and group_size not in GROUP_SIZES:
        raise RARDeployError(f"--group-size {group_size} is not supported: choose {', '.join(map(str, GROUP_SIZES))}")
    fitting = [g for g in GROUP_SIZES if all(width % g == 0 for width in widths.values())]
    if group_size is None:
        if not fitting:
            raise RARDeployError(f"no int4 group size of {GROUP_SIZES} divides every quantized width "
                                 f"({sorted(set(widths.values()))}): use --weights int8")
        return WeightQuantization("int4", fitting[0])
    name, width = next(((n, w) for n, w in widths.items() if w % group_size), (None, 0))
    if name is not None:
        raise RARDeployError(f"--group-size {group_size} does not divide the input width {width} of {name}: "
                             f"choose {' or '.join(map(str, fitting)) or 'int8'}")
    return WeightQuantization("int4", group_size)


def quantize(weight: np.ndarray, quantization: WeightQuantization, scale_dtype: type
             ) -> tuple[np.ndarray, np.ndarray]:
    """weight [in, out] (a MatMul's right operand) -> (integers [in, out] as int8, int4 ones in -7 .. 7; scales of
    `scale_shape` in `scale_dtype`)."""
    weight = np.asarray(weight, dtype=np.float32)
    k, n = weight.shape
    blocks = weight.reshape(1, k, n) if quantization.group_size is None else \
        weight.reshape(k // quantization.group_size, quantization.group_size, n)
    peak = np.abs(blocks).max(axis=1)  # [groups, out]
    scale = (peak / quantization.levels).astype(scale_dtype)
    scale[scale == 0] = 1  # an all-zero channel: any scale gives zeros
    q = np.rint(blocks / scale.astype(np.float32)[:, None, :])
    q = np.clip(q, -quantization.levels, quantization.levels).reshape(k, n)
    return q.astype(np.int8), scale.reshape(quantization.scale_shape(k, n))


def dequantize(q: np.ndarray, scale: np.ndarray, quantization: WeightQuantization) -> np.ndarray:
    """The float32 weight [in, out] that `q` and `scale` stand for, exactly (DequantizeLinear's rule)."""
    k, n = q.shape
    per_row = scale.astype(np.float32).reshape(-1, n)  # [groups, out]
    rows = k if quantization.group_size is None else quantization.group_size
    return (q.astype(np.float32).reshape(-1, rows, n) * per_row[:, None, :]).reshape(k, n)
